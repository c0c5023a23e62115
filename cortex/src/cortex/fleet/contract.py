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
instead of failing the poll: one engine's odd gauge must not hide the neuron's models.
"""

from __future__ import annotations

import math
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

    @field_validator("running", "waiting", "kv_cache_usage", mode="wrap")
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


class BreachError(ValueError):
    """A neuron's answer does not keep the contract; the message says where and how."""


T = TypeVar("T")
_MODELS = TypeAdapter(list[ModelInfo])
_HEALTH = TypeAdapter(Health)
_DISCOVERY = TypeAdapter(Discovery)


def models(body: bytes) -> dict[str, dict[str, Any]]:
    """``/models``: ``ModelInfo`` by model id."""
    return {info.id: info.model_dump() for info in _parse(_MODELS, body, "/models")}


def model(value: Any) -> dict[str, Any]:
    """One ``ModelInfo`` already decoded (a load's answer carries one)."""
    try:
        return ModelInfo.model_validate(value).model_dump()
    except ValidationError as exc:
        raise BreachError(_describe("the loaded model", exc)) from None


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
