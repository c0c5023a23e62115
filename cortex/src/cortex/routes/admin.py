"""Loading and unloading by hand: what ``cortex load`` and ``cortex unload`` call.

``POST /admin/models/load {"model", "node"?}`` → ``{"status": "loaded", "model", "node",
"seconds"}`` once the model is ready (a model ready already answers at once).
``POST /admin/models/unload {"model", "node"?}`` → ``{"status": "unloaded", "model",
"nodes"}``; without ``node`` it is unloaded everywhere. Both need an admin key when keys
are configured (``cortex.auth``); a user key gets 403.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import BadRequest
from cortex.routes.body import read_object

if TYPE_CHECKING:
    from cortex.app import Gateway

MAX_BODY = 64 * 1024


async def load(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    model, node = _target(await read_object(request, MAX_BODY))
    where, seconds = await gw.loader.load(model, node)
    return JSONResponse(
        {"status": "loaded", "model": model, "node": where.name, "seconds": round(seconds, 2)}
    )


async def unload(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    model, node = _target(await read_object(request, MAX_BODY))
    nodes = await gw.loader.unload(model, node)
    return JSONResponse({"status": "unloaded", "model": model, "nodes": nodes})


def _target(body: dict[str, Any]) -> tuple[str, str | None]:
    model, node = body.get("model"), body.get("node")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if node is not None and (not isinstance(node, str) or not node):
        raise BadRequest("'node' must be a neuron name", param="node")
    return model, node
