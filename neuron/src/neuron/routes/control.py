"""The control plane: health, discovery, model lifecycle, the change stream, metrics.

Every answer that tells a model's state names it: ``/models`` in its ``X-Neuron-Epoch`` and
``X-Neuron-Instance`` headers, ``/health`` in ``epoch`` and ``instance``, and load, unload,
``/models/watch`` and every 409 ``stale_epoch`` / ``model_busy`` in a ``state`` object
(``{"instance", "epoch", "status", "models": [ModelInfo...]}``). Load, unload, sleep and
wake may carry the ``epoch`` and the ``instance`` (boot) their sender decided from: a command
decided from another state, or on another boot, is 409 ``stale_epoch`` with the state.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from neuron import __version__
from neuron.engine import HARNESSES
from neuron.engine.stats import UNKNOWN
from neuron.errors import BadRequest, Fenced
from neuron.registry import ASLEEP, Busy, State
from neuron.routes.body import read_object
from neuron.settings import ModelSpec, describe

if TYPE_CHECKING:
    from neuron.app import Neuron

log = logging.getLogger("neuron.control")


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
            "instance": n.registry.instance,
            "epoch": n.registry.epoch,
            "loaded_models": len(n.registry.awake()),
            "max_loaded_models": n.registry.max_loaded_models,
            "sleep": n.registry.sleep_info(),
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
            "sleep": n.registry.sleep_info(),
            "neuron_version": __version__,
            "engine_version": await n.engine_version(),
        }
    )


WATCH_MAX_WAIT = 30.0
"""Longest a ``/models/watch`` is held (seconds), whatever its ``timeout`` asks."""
MAX_EVICT = 64


def model_infos(n: Neuron) -> list[dict[str, Any]]:
    """``/models``: every model the registry holds, and default models not yet handed to it."""
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
            "last_used": None,
            "idle_s": None,
            "error": None,
            "since": None,
            "state_s": None,
            "sleep_level": None,
            "host_ram_mb": 0,
            "last_load_s": None,
            "last_wake_s": None,
            "engine": None,
            **UNKNOWN.public(),
        }
        for spec in n.lifecycle.pending.values()
        if spec.model_id not in known
    ]
    return infos


def state(n: Neuron) -> dict[str, Any]:
    """This neuron's state as of now, named by its instance and epoch."""
    return {
        "instance": n.registry.instance,
        "epoch": n.registry.epoch,
        "status": n.lifecycle.status,
        "models": model_infos(n),
    }


def _headers(n: Neuron) -> dict[str, str]:
    return {"X-Neuron-Epoch": str(n.registry.epoch), "X-Neuron-Instance": n.registry.instance}


async def list_models(request: Request) -> Response:
    n = _neuron(request)
    return JSONResponse(model_infos(n), headers=_headers(n))


async def watch(request: Request) -> Response:
    """``GET /models/watch?epoch=N&timeout=S[&instance=I]``: a long poll on the state.

    Answers at once when the epoch is not ``N`` (or the instance is not ``I``), else when it
    moves on, or after ``min(S, WATCH_MAX_WAIT)`` seconds; always with the current state.
    """
    n = _neuron(request)
    query = request.query_params
    epoch = _number(query.get("epoch"), "epoch", int)
    wait = _number(query.get("timeout", str(WATCH_MAX_WAIT)), "timeout", float)
    instance = query.get("instance")
    if epoch is not None and (instance is None or instance == n.registry.instance):
        await n.registry.watch(int(epoch), min(float(wait or 0.0), WATCH_MAX_WAIT))
    return JSONResponse(state(n), headers=_headers(n))


def _number(text: str | None, name: str, kind: type[int] | type[float]) -> float | None:
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise BadRequest(f"{name!r} must be a number, got {text[:40]!r}", param=name) from None
    if not value >= 0 or value == float("inf"):
        raise BadRequest(f"{name!r} must be a finite number >= 0", param=name)
    return value


def _epoch(body: dict[str, Any], n: Neuron) -> int | None:
    """The command's ``epoch``, read against its ``instance`` (the boot it was decided on):
    a command decided on another boot of this neuron is fenced (:meth:`Registry.stamp`)."""
    epoch = body.pop("epoch", None)
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise BadRequest("'epoch' must be a whole number >= 0", param="epoch")
    instance = body.pop("instance", None)
    if instance is not None and (not isinstance(instance, str) or not 0 < len(instance) <= 64):
        raise BadRequest("'instance' must be a string of 1 to 64 characters", param="instance")
    return n.registry.stamp(instance, epoch)


def _asker(request: Request) -> str:
    """Which cortex replica sent a command (its ``X-Cortex-Instance``), for the log."""
    return repr(request.headers.get("x-cortex-instance", "?")[:64])


def _evict(body: dict[str, Any]) -> tuple[str, ...]:
    evict = body.pop("evict", [])
    if (
        not isinstance(evict, list)
        or len(evict) > MAX_EVICT
        or not all(isinstance(m, str) and m for m in evict)
    ):
        raise BadRequest(f"'evict' must be a list of at most {MAX_EVICT} model ids", param="evict")
    return tuple(evict)


async def load(request: Request) -> Response:
    n = _neuron(request)
    body = await read_object(request, n.settings.max_body_bytes)
    epoch = _epoch(body, n)
    evict = _evict(body)
    try:
        spec = ModelSpec.model_validate(body)
    except ValidationError as exc:
        where = exc.errors()[0]["loc"] if exc.errors() else ()
        param = str(where[0]) if where else None
        raise BadRequest(f"invalid model spec: {describe(exc)}", param=param) from None
    n.policy.check(spec.resolved_source, spec.engine_args)
    log.info(
        "load of %s from %s (epoch %s, evict %s)", spec.model_id, _asker(request), epoch, evict
    )
    was = n.registry.get(spec.model_id)
    asleep = was is not None and was.state in ASLEEP
    try:
        slot, evicted = await n.registry.place(spec, epoch=epoch, evict=evict)
    except Fenced as exc:
        exc.extra["state"] = state(n)
        raise
    return JSONResponse(
        {
            "status": "loaded",
            "model": slot.info(),
            # Of ``evicted``, those put to sleep rather than stopped.
            "slept": [m for m in evicted or () if _asleep(n, m)],
            # Whether this call started the engine (else it joined, or found it ready), and
            # what it evicted to make room: for the caller's own counts.
            "started": evicted is not None and not (asleep and slot.woke),
            # A load of a sleeping model wakes it (no engine started), unless the wake failed
            # and the model was loaded afresh: that was a cold start.
            "woken": evicted is not None and asleep and slot.woke,
            "evicted": list(evicted or ()),
            "state": state(n),
        }
    )


async def unload(request: Request) -> Response:
    """``force``: a model with requests in flight leaves routing at once and is stopped when
    they are done (at most ``drain_timeout``); without it, such an unload is 409 ``model_busy``."""
    n = _neuron(request)
    body = await read_object(request, n.settings.max_body_bytes)
    model_id = body.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("'model_id' is required and must be a string", param="model_id")
    epoch = _epoch(body, n)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("'force' must be true or false", param="force")
    idle = body.get("idle_at_least")
    if idle is not None and (
        not isinstance(idle, int | float) or isinstance(idle, bool) or not 0 <= idle < 1e9
    ):
        raise BadRequest("'idle_at_least' must be a number of seconds >= 0", param="idle_at_least")
    log.info(
        "unload of %r from %s (epoch %s, force %s)", model_id[:256], _asker(request), epoch, force
    )
    busy = Busy.WAIT if force else Busy.REFUSE
    if n.lifecycle.draining:
        busy = Busy.CUT
    try:
        await n.registry.unload(
            model_id,
            epoch=epoch,
            busy=busy,
            patience=n.settings.drain_timeout,
            idle_at_least=idle,
        )
    except Fenced as exc:
        exc.extra["state"] = state(n)
        raise
    return JSONResponse({"status": "unloaded", "state": state(n)})


def _asleep(n: Neuron, model_id: str) -> bool:
    slot = n.registry.get(model_id)
    return slot is not None and slot.state is State.SLEEPING


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("'model_id' is required and must be a string", param="model_id")
    return model_id


async def sleep(request: Request) -> Response:
    """``POST /models/sleep {"model_id", "epoch"?, "instance"?, "level"?, "idle_at_least"?}``:
    put a ready, idle model to sleep (idempotent: a sleeping one answers at once)."""
    n = _neuron(request)
    body = await read_object(request, n.settings.max_body_bytes)
    model_id = _model_id(body)
    epoch = _epoch(body, n)
    level = body.get("level")
    if level is not None and (isinstance(level, bool) or level not in (1, 2)):
        raise BadRequest("'level' must be 1 or 2", param="level")
    idle = body.get("idle_at_least")
    if idle is not None and (
        isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle < 1e9
    ):
        raise BadRequest("'idle_at_least' must be a number of seconds >= 0", param="idle_at_least")
    log.info("sleep of %r from %s (epoch %s)", model_id[:256], _asker(request), epoch)
    try:
        slot = await n.registry.sleep(model_id, epoch=epoch, level=level, idle_at_least=idle)
    except Fenced as exc:
        exc.extra["state"] = state(n)
        raise
    return JSONResponse({"status": "sleeping", "model": slot.info(), "state": state(n)})


async def wake(request: Request) -> Response:
    """``POST /models/wake {"model_id", "epoch"?, "instance"?, "evict"?}``: wake a sleeping
    model, first putting ``evict`` to sleep (or stopping them) for room; idempotent like a
    load."""
    n = _neuron(request)
    body = await read_object(request, n.settings.max_body_bytes)
    model_id = _model_id(body)
    epoch = _epoch(body, n)
    evict = _evict(body)
    log.info(
        "wake of %r from %s (epoch %s, evict %s)", model_id[:256], _asker(request), epoch, evict
    )
    try:
        slot, demoted = await n.registry.wake(model_id, epoch=epoch, evict=evict)
    except Fenced as exc:
        exc.extra["state"] = state(n)
        raise
    return JSONResponse(
        {
            "status": "awake",
            "model": slot.info(),
            # As for a load: a wake that failed and was followed by a fresh load is a cold
            # start, not a wake.
            "woken": demoted is not None and slot.woke,
            "started": demoted is not None and not slot.woke,
            "evicted": list(demoted or ()),
            "slept": [m for m in demoted or () if _asleep(n, m)],
            "state": state(n),
        }
    )


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
