"""Fleet views: ``/health``, the merged ``/v1/models``, and ``/fleet`` for ``cortex status``.

``/fleet`` shows neuron endpoints and their errors: it needs an admin key (``cortex.auth``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.auth import caller_of

if TYPE_CHECKING:
    from cortex.app import Gateway


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def health(request: Request) -> Response:
    fleet = _gw(request).fleet
    up = len(fleet.up())
    return JSONResponse(
        {
            "status": "ok" if up else "degraded",
            "instance": _gw(request).settings.instance,
            "neurons": {"up": up, "down": len(fleet.nodes) - up, "total": len(fleet.nodes)},
            "models_ready": sum(1 for locs in fleet.locations().values() if _ready(locs)),
        }
    )


async def models(request: Request) -> Response:
    """The models the fleet knows, less those the caller's key may not use.

    ``state``: the best rung of the ladder the model is on anywhere (``ready``, ``loading``,
    ``waking``, ``sleeping``, ``stopped``); ``estimated_ready_s`` when it is not ready: the
    time left of a load or wake in progress, else what waking (or cold-loading) it would take.
    """
    gw = _gw(request)
    caller = caller_of(request.scope)
    created = int(gw.started_wall)
    data = []
    for model_id, locations in sorted(gw.fleet.locations().items()):
        if not caller.may_use(model_id):
            continue
        item: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "cortex",
            "locations": locations,
            "state": _state(locations),
        }
        if item["state"] != "ready":
            item["estimated_ready_s"] = round(_eta(gw, model_id, locations), 1)
        data.append(item)
    return JSONResponse({"object": "list", "data": data})


LADDER = ("ready", "waking", "loading", "sleeping")


def _state(locations: list[dict[str, str]]) -> str:
    statuses = {loc["status"] for loc in locations}
    return next((s for s in LADDER if s in statuses), "stopped")


def _eta(gw: Gateway, model_id: str, locations: list[dict[str, str]]) -> float:
    estimates = gw.loader.estimates
    coming = estimates.coming(model_id)
    if coming is not None:
        return coming[1]
    for kind, status in (("wake", "waking"), ("cold", "loading"), ("wake", "sleeping")):
        nodes = [loc["node"] for loc in locations if loc["status"] == status]
        if nodes:
            reported = gw.loader.eta(model_id)
            # Under way (another replica's load or wake): the time left, by the neuron's age
            # of that state; a sleeper: the whole wake.
            return min(
                max(0.0, estimates.eta(model_id, node, kind, reported) - _age(gw, node, model_id))
                if status != "sleeping"
                else estimates.eta(model_id, node, kind, reported)
                for node in nodes
            )
    return estimates.eta(model_id, None, "cold")


def _age(gw: Gateway, node: str, model_id: str) -> float:
    try:
        return gw.fleet.node(node).state_age(model_id) or 0.0
    except KeyError:
        return 0.0


async def fleet(request: Request) -> Response:
    gw = _gw(request)
    nodes: list[dict[str, Any]] = []
    for node in gw.fleet.nodes:
        devices = (node.health or {}).get("devices", []) if node.up else []
        info = (node.discovery or {}).get("devices", [])
        total = sum(int(d.get("vram_total_mb") or 0) for d in info)
        free = sum(int(d.get("vram_free_mb") or 0) for d in devices)
        nodes.append(
            {
                "name": node.name,
                "endpoint": node.base,
                "status": node.status,
                "up": node.up,
                "error": node.last_error,
                "gpus": len(info),
                "vram_total_mb": total,
                "vram_used_mb": max(0, total - free) if devices else 0,
                "in_flight": node.in_flight,
                "models": [
                    {"id": m, "status": i.get("status")} for m, i in sorted(node.models.items())
                ],
            }
        )
    return JSONResponse(
        {
            "uptime_secs": round(time.monotonic() - gw.started, 1),
            "neurons": nodes,
            "models": gw.fleet.locations(),
        }
    )


def _ready(locations: list[dict[str, str]]) -> bool:
    return any(loc["status"] == "ready" for loc in locations)
