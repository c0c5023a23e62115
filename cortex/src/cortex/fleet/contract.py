"""The neuron contract as cortex reads it: ``/models``, ``/health``, ``/discovery``.

Every answer a neuron gives the poller (and a load's ``model``) is parsed here, at the
boundary, before any of it reaches the fleet: a neuron is a program cortex does not
control, and one field of the wrong type (``"in_flight": "lots"``, a device that is not
an object) must cost that neuron its poll, never cortex its poller. What passes is kept as
plain dicts of checked values (:func:`models`, :func:`health`, :func:`discovery`), so the
rest of cortex reads them as before, and a value read from them is of the type declared
here.

Fields a newer neuron adds are kept (``extra="allow"``); fields cortex relies on are
checked. ``running``, ``waiting`` and ``kv_cache_usage`` are optional: the engine's load,
which neurons report from issue 17 on. Being optional, a value of theirs that breaks the
contract (a negative count, a usage over 1, NaN, words) is read as ``None`` (not known)
instead of failing the poll: one engine's odd gauge must not hide the neuron's models. The
same holds for ``last_used`` and ``idle_s`` (issue 24), and for ``since``, ``state_s``,
``last_load_s`` and ``last_wake_s`` (issue 23): placement decides from them, so a value of
theirs must be a number every replica reads alike, or nothing.

From issue 24 on a neuron names each state it reports: ``instance`` (one per boot) and
``epoch`` (bumped by every change of a model's state), in ``/health``, in the headers of
``/models`` and in the :class:`State` that load, unload, ``/models/watch`` and a 409
``stale_epoch``/``model_busy`` carry. An older neuron names none: cortex then works as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

Count = Annotated[int, Field(ge=0)]
Amount = Annotated[float, Field(ge=0)]
Instance = Annotated[str, Field(min_length=1, max_length=64)]


class Contract(BaseModel):
    """A part of a neuron's answer: checked where cortex relies on it, the rest kept."""

    model_config = ConfigDict(extra="allow")


class ModelInfo(Contract):
    id: Annotated[str, Field(min_length=1)]
    status: str
    """``loading``, ``ready``, ``unloading`` or ``failed`` (others are kept, never routed to)."""
    harness: str | None = None
    devices: list[Count] = Field(default_factory=list)
    vram_used_mb: Amount = 0
    in_flight: Count = 0
    error: str | None = None
    running: Count | None = None
    waiting: Count | None = None
    kv_cache_usage: Annotated[float, Field(ge=0, le=1)] | None = None
    last_used: Amount | None = None
    """When a request for it last started or ended, by the neuron's clock (unix seconds)."""
    idle_s: Amount | None = None
    """Seconds since then as of the answer (0: in use)."""
    since: Amount | None = None
    """When it entered its current state, by the neuron's clock (unix seconds)."""
    state_s: Amount | None = None
    """Seconds in its current state as of the answer."""
    last_load_s: Amount | None = None
    """How long its engine's cold start took (seconds)."""
    last_wake_s: Amount | None = None
    """How long its last wake took (seconds; ``None``: never woken)."""

    @field_validator(
        "running",
        "waiting",
        "kv_cache_usage",
        "last_used",
        "idle_s",
        "since",
        "state_s",
        "last_load_s",
        "last_wake_s",
        mode="wrap",
    )
    @classmethod
    def _unknown_if_invalid(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            checked = handler(value)
        except ValidationError:
            return None
        if isinstance(checked, float) and not math.isfinite(checked):
            return None
        return checked


class DeviceSample(Contract):
    """One GPU in ``/health``."""

    index: Count
    vram_used_mb: Amount | None = None
    vram_free_mb: Amount | None = None
    utilization_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    temp_c: float | None = None


class Health(Contract):
    status: str
    """``activating``, ``ready`` or ``draining``."""
    uptime_secs: Amount | None = None
    in_flight: Count | None = None
    devices: list[DeviceSample] = Field(default_factory=list)
    loaded_models: Count | None = None
    max_loaded_models: Annotated[int, Field(ge=1)] | None = None
    instance: Instance | None = None
    epoch: Count | None = None


class Device(Contract):
    """One GPU in ``/discovery``."""

    index: Count
    name: str | None = None
    vram_total_mb: Amount = 0
    compute_capability: str | None = None


class Discovery(Contract):
    hostname: str | None = None
    devices: list[Device] = Field(default_factory=list)
    harnesses: list[str] | None = None
    max_loaded_models: Annotated[int, Field(ge=1)] | None = None


class State(Contract):
    """A neuron's state, named: the ``state`` of load, unload, watch and fenced answers."""

    instance: Instance
    epoch: Count
    status: str | None = None
    models: list[ModelInfo]


class BreachError(ValueError):
    """A neuron's answer does not keep the contract; the message says where and how."""


T = TypeVar("T")
_MODELS = TypeAdapter(list[ModelInfo])
_HEALTH = TypeAdapter(Health)
_DISCOVERY = TypeAdapter(Discovery)
_STATE = TypeAdapter(State)


def models(body: bytes) -> dict[str, dict[str, Any]]:
    """``/models``: ``ModelInfo`` by model id."""
    return by_id(_parse(_MODELS, body, "/models"))


def model(value: Any) -> dict[str, Any]:
    """One ``ModelInfo`` already decoded (a load's answer carries one)."""
    try:
        return ModelInfo.model_validate(value).model_dump()
    except ValidationError as exc:
        raise BreachError(_describe("the loaded model", exc)) from None


def state(body: bytes) -> State:
    """``/models/watch``."""
    return _parse(_STATE, body, "/models/watch")


def named_state(value: Any) -> State | None:
    """The ``state`` member of a load, unload or 409 answer already decoded (``None`` when
    the neuron sent none: it predates epochs)."""
    if value is None:
        return None
    try:
        return State.model_validate(value)
    except ValidationError as exc:
        raise BreachError(_describe("the neuron's state", exc)) from None


def named(headers: Mapping[str, str]) -> tuple[str | None, int | None]:
    """The ``(instance, epoch)`` that ``/models`` headers name; ``(None, None)`` if they name
    none or not both (an older neuron, or headers that break the contract)."""
    instance = headers.get("X-Neuron-Instance")
    epoch = headers.get("X-Neuron-Epoch", "")
    if not instance or len(instance) > 64 or not (0 < len(epoch) <= 20 and epoch.isascii()):
        return None, None
    if not epoch.isdigit():
        return None, None
    return instance, int(epoch)


def by_id(infos: list[ModelInfo]) -> dict[str, dict[str, Any]]:
    return {info.id: info.model_dump() for info in infos}


def health(body: bytes) -> dict[str, Any]:
    """``/health``."""
    return _parse(_HEALTH, body, "/health").model_dump()


def discovery(body: bytes) -> dict[str, Any]:
    """``/discovery``."""
    return _parse(_DISCOVERY, body, "/discovery").model_dump()


def _parse(adapter: TypeAdapter[T], body: bytes, what: str) -> T:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise BreachError(_describe(what, exc)) from None


def _describe(what: str, exc: ValidationError) -> str:
    """The first problem, where it is and what was there: enough to find it in the neuron."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "the answer"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    if first["type"] in ("json_invalid", "missing"):
        return f"{what} breaks the contract: {where}: {first['msg']}{more}"
    return f"{what} breaks the contract: {where}: {first['msg']}, got {got}{more}"
