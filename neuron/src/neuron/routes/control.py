"""The control plane: health, discovery, model lifecycle, metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from neuron import __version__
from neuron.engine import HARNESSES
from neuron.engine.stats import UNKNOWN
from neuron.errors import BadRequest
from neuron.registry import State
from neuron.routes.body import read_object
from neuron.settings import ModelSpec, describe

if TYPE_CHECKING:
    from neuron.app import Neuron


def _neuron(request: Request) -> Neuron:
    neuron: Neuron = request.app.state.neuron
    return neuron


async def health(request: Request) -> Response:
    n = _neuron(request)
    return JSONResponse(
        {
            "status": n.lifecycle.status,
            "uptime_secs": round(time.monotonic() - n.lifecycle.started, 1),
            "in_flight": sum(s.in_flight for s in n.registry.slots()),
            "loaded_models": len(n.registry.engines()),
            "max_loaded_models": n.registry.max_loaded_models,
            "devices": [s.public() for s in n.health.samples],
        }
    )


async def discovery(request: Request) -> Response:
    n = _neuron(request)
    host = n.health.host or await n.health.describe_host()
    return JSONResponse(
        {
            **host.public(),
            "harnesses": list(HARNESSES),
            "max_loaded_models": n.registry.max_loaded_models,
            "neuron_version": __version__,
            "engine_version": await n.engine_version(),
        }
    )


async def list_models(request: Request) -> Response:
    n = _neuron(request)
    infos = [slot.info() for slot in n.registry.slots()]
    known = {slot.model_id for slot in n.registry.slots()}
    infos += [
        {
            "id": spec.model_id,
            "harness": spec.harness,
            "status": "loading",
            "devices": spec.devices or [],
            "vram_used_mb": 0,
            "in_flight": 0,
            "error": None,
            "engine": None,
            **UNKNOWN.public(),
        }
        for spec in n.lifecycle.pending.values()
        if spec.model_id not in known
    ]
    return JSONResponse(infos)


async def load(request: Request) -> Response:
    n = _neuron(request)
    body = await read_object(request, n.settings.max_body_bytes)
    try:
        spec = ModelSpec.model_validate(body)
    except ValidationError as exc:
        where = exc.errors()[0]["loc"] if exc.errors() else ()
        param = str(where[0]) if where else None
        raise BadRequest(f"invalid model spec: {describe(exc)}", param=param) from None
    n.policy.check(spec.resolved_source, spec.engine_args)
    slot = await n.registry.load(spec)
    return JSONResponse({"status": "loaded", "model": slot.info()})


async def unload(request: Request) -> Response:
    n = _neuron(request)
    body = await read_object(request, n.settings.max_body_bytes)
    model_id = body.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("'model_id' is required and must be a string", param="model_id")
    await n.registry.unload(model_id)
    return JSONResponse({"status": "unloaded"})


async def endpoint(request: Request) -> Response:
    n = _neuron(request)
    model_id = request.path_params["model_id"]
    n.require(model_id)
    return JSONResponse({"url": str(request.base_url).rstrip("/")})


async def openai_models(request: Request) -> Response:
    n = _neuron(request)
    created = int(time.time())
    data = [
        {"id": s.model_id, "object": "model", "created": created, "owned_by": "neuron"}
        for s in n.registry.slots()
        if s.state is State.READY
    ]
    return JSONResponse({"object": "list", "data": data})


async def metrics(request: Request) -> Response:
    n = _neuron(request)
    own = generate_latest(n.metrics.registry)
    return Response(own + await n.watch.exposition(), media_type=CONTENT_TYPE_LATEST)
