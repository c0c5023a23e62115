"""What a model is on this neuron: its :class:`State`, and the :class:`Slot` that holds its
engine, its counters and its timings; the checks and waits that read one slot alone."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from neuron.engine import EngineProcess
from neuron.engine.stats import UNKNOWN, EngineLoad
from neuron.errors import LoadCancelled, ModelBusy
from neuron.settings import ModelSpec


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"
    SLEEPING = "sleeping"
    WAKING = "waking"


ASLEEP = frozenset({State.SLEEPING, State.WAKING})
ALIVE = frozenset({State.READY, State.SLEEPING})
"""States in which an engine exiting on its own makes the model ``failed``."""


class Busy(StrEnum):
    """What an unload does to a model with requests in flight."""

    REFUSE = "refuse"
    """409 ``model_busy``; nothing changes (an eviction, an unload without ``force``)."""
    WAIT = "wait"
    """Out of routing at once (new requests get 503), stopped once its requests are done."""
    CUT = "cut"
    """Stopped now (shutdown, after the drain has waited)."""


@dataclass(eq=False)
class Slot:
    spec: ModelSpec
    engine: EngineProcess
    _state: State = State.LOADING
    error: str | None = None
    in_flight: int = 0
    reserved_mb: int = 0
    start: asyncio.Task[None] | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    load: EngineLoad = UNKNOWN
    """The engine's own running/waiting/KV numbers, as of its last scrape (``EngineWatch``)."""
    last_used: float | None = None
    """When a request for it last started or ended (unix seconds, this host's clock)."""
    used: float | None = None
    """The same on the monotonic clock (for ``idle_s``, which replicas compare)."""
    ready_at: float | None = None
    """When it became ready (monotonic): a model never used is idle since then."""
    quiet: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no request is in flight (an unload with ``Busy.WAIT`` waits for it)."""
    since: float = field(default_factory=time.time)
    """When it entered its current state (unix seconds)."""
    op: asyncio.Task[str | None] | None = None
    """The sleep or wake in progress (or last done): every waker joins it."""
    sleep_level: int | None = None
    slept: bool = False
    """Has slept since its engine started (vLLM keeps its host memory pinned after a wake)."""
    host_ram_mb: int = 0
    """The host RAM charged to its engine against ``[sleep] host_ram_budget_mb``: charged when
    its first sleep *begins* (so concurrent sleeps cannot all pass the budget check), kept
    until the engine stops; 0 for an engine that never began a sleep."""
    sleep_vram_mb: int = 0
    """The GPU memory it keeps while asleep (measured, or ``sleep.sleeper_vram_mb``)."""
    canary: str | None = None
    """Its greedy first token for ``sleep.canary_prompt``, recorded before its first sleep."""
    load_s: float | None = None
    """``last_load_s``: seconds its last cold start took, from the moment the neuron began it
    (including the wait for the models it displaces to stop or sleep) until ready."""
    wake_s: float | None = None
    """``last_wake_s``: the same for its last wake (from the moment the neuron began it,
    including the wait for its room and for its own sleep to finish); ``None`` if its engine
    has not woken since it started. Timed alike, so the two can be compared."""
    woken_at: float | None = None
    """When its engine last woke (monotonic; ``None`` if it has not woken since it started)."""

    @property
    def woke(self) -> bool:
        """It last became ready by a wake, not a cold start (a wake that failed and was
        followed by a fresh load is a cold start)."""
        return self.woken_at is not None

    def __post_init__(self) -> None:
        self.quiet.set()

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        if value is not self._state:
            self.since = time.time()
        self._state = value

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def begin(self) -> None:
        """A request for this model starts (counted in ``in_flight``, and as a use)."""
        self.in_flight += 1
        self.quiet.clear()
        self._used()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.quiet.set()
        self._used()

    def _used(self) -> None:
        self.used, self.last_used = time.monotonic(), time.time()

    def settling(self, min_residency: float) -> bool:
        """Woken less than ``min_residency`` seconds ago: not to be demoted again yet."""
        return self.woken_at is not None and time.monotonic() - self.woken_at < min_residency

    def idle_s(self) -> float | None:
        """Seconds since its last use (0 while in use); since ready if never used."""
        if self.in_flight:
            return 0.0
        since = self.used if self.used is not None else self.ready_at
        return None if since is None else round(time.monotonic() - since, 3)

    def info(self) -> dict[str, Any]:
        """The ``ModelInfo`` wire shape (``engine`` is an addition for operators and tests)."""
        return {
            "id": self.model_id,
            "harness": self.spec.harness,
            "status": str(self.state),
            "devices": self.engine.devices or [],
            "vram_used_mb": (
                0
                if self.state is State.FAILED
                else self.sleep_vram_mb
                if self.state is State.SLEEPING
                else self.reserved_mb
            ),
            "in_flight": self.in_flight,
            "last_used": self.last_used,
            "idle_s": self.idle_s(),
            "error": self.error,
            "since": self.since,
            "state_s": round(max(0.0, time.time() - self.since), 3),
            "sleep_level": self.sleep_level if self.state in ASLEEP else None,
            "host_ram_mb": self.host_ram_mb,
            "last_load_s": self.load_s,
            "last_wake_s": self.wake_s,
            "engine": {"pid": self.engine.pid, "url": self.engine.url},
            **self.load.public(),
        }


async def join(slot: Slot, start: asyncio.Task[Any] | None = None) -> Slot:
    """Wait for ``start`` (``slot``'s start, or its wake): the slot once it is done.

    The wait never cancels ``start``; a start cancelled by an unload is
    :class:`LoadCancelled` to whoever waited for it."""
    start = start or slot.start
    if start is None:
        return slot
    try:
        await asyncio.shield(start)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if start.cancelled() and not (current and current.cancelling()):
            what = "load" if start is slot.start else "wake"
            raise LoadCancelled(f"{what} of {slot.model_id} was cancelled by an unload") from None
        raise
    return slot


def require_idle(slot: Slot, idle_at_least: float | None, command: str) -> None:
    """:class:`ModelBusy` unless ``slot`` has been idle ``idle_at_least`` seconds (no demand:
    nothing to check). Loading or waking counts as in use: an idle sleep or unload (a
    replica's housekeeping) must not cancel another replica's load or wake."""
    if idle_at_least is None:
        return
    if slot.state in (State.LOADING, State.WAKING):
        raise ModelBusy(
            f"model {slot.model_id!r} is {slot.state}: in use, not idle", param="idle_at_least"
        )
    idle = slot.idle_s()
    if idle is not None and idle < idle_at_least:
        raise ModelBusy(
            f"model {slot.model_id!r} was used {idle:.1f}s ago (the {command} asked for "
            f"{idle_at_least:g}s of idleness)",
            param="idle_at_least",
        )
