"""Which models this neuron has, in which state, and the single-flight load/unload of each.

States: ``loading → ready → unloading`` (then gone), and ``failed`` (start failed, or the
engine exited on its own; the entry stays, with the reason, until it is unloaded or loaded
again). The residency ladder adds ``ready → sleeping → waking → ready``: a sleeping model
keeps its engine process (vLLM sleep mode: weights in host RAM, little GPU memory), and is
woken by a wake command, a load of it, or a request for it (one wake, whoever asks).

Sleep and wake go through the same authority as load and unload: fenced by the epoch, a
sleep refused (409 ``model_busy``) while requests are in flight, single-flight per model. A
model evicted to make room sleeps instead of stopping while ``[sleep]`` budgets allow (host
RAM for every model that has begun a sleep since its engine started, charged as the sleep
begins so that concurrent sleeps cannot overshoot it, and ``max_sleeping_models``).
A wake whose engine fails, or whose canary token differs from the one recorded before its
first sleep, stops that engine and loads the model afresh.

Concurrency contract, per model id:
- a load while ``loading`` joins that start; while ``ready`` returns at once; there is never
  more than one engine for a model;
- a load while ``unloading`` waits for the unload, then starts afresh; a load of a ``failed``
  model replaces the failed entry;
- an unload while ``loading`` cancels the start (the engine is stopped) and joining loads
  get 409 ``load_cancelled``; concurrent unloads share one stop.

Authority (several cortex replicas, one neuron): every change of a model's state (placed,
ready, failed, unloading, gone) bumps :attr:`Registry.epoch`, which with the per-boot
:attr:`Registry.instance` names one state of this neuron. A command (load, unload; later
sleep and wake) may carry the epoch its sender's decision was based on: if the state has
moved on since, it raises :class:`StaleEpoch` and changes nothing (:meth:`Registry.fence`,
which any future state-changing command reuses). A load of a model already loading or ready
is answered from that state before the fence: it starts nothing, whatever its epoch; so
are an unload of a model already unloading (it waits for that stop) and a sleep or wake of
a model already there or on its way (it waits for that one, and shares its outcome). A
command may also name the boot its epoch belongs to (``instance``); an epoch of another
boot is :data:`OTHER_BOOT` (:meth:`Registry.stamp`), which the fence always refuses. A
model with requests in flight is never unloaded or evicted, unless its unload was asked to
wait for them (``Busy.WAIT``) or the neuron is shutting down (``Busy.CUT``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import httpx

from neuron.discovery import DeviceSample
from neuron.engine import HARNESSES, EngineProcess
from neuron.engine import sleep as engine_sleep
from neuron.engine.stats import UNKNOWN, EngineLoad
from neuron.errors import (
    DoesNotFit,
    EngineFailed,
    LoadCancelled,
    ModelBusy,
    ModelNotFound,
    NoSleep,
    ShuttingDown,
    StaleEpoch,
    UnknownHarness,
)
from neuron.metrics import NeuronMetrics
from neuron.placement import choose_devices
from neuron.settings import ModelSpec, SleepSettings, VllmHarness

log = logging.getLogger("neuron.registry")


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
OTHER_BOOT = -1
"""The epoch of a command decided on another boot of this neuron: no state of this boot has
it (epochs start at 0), so the fence refuses it."""


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


Sampler = Callable[[], Awaitable[list[DeviceSample]]]


class Registry:
    def __init__(
        self,
        harness: VllmHarness,
        client: httpx.AsyncClient,
        metrics: NeuronMetrics,
        sample: Sampler,
        *,
        max_loaded_models: int | None = None,
        sleep: SleepSettings | None = None,
        keep_awake: frozenset[str] = frozenset(),
    ) -> None:
        self._harness = harness
        self.keep_awake = keep_awake
        """Models this neuron never demotes on its own to wake another (its default models:
        the only pins it knows of; cortex's ``pinned_on`` stay cortex's to keep)."""
        self.sleep_settings = sleep or SleepSettings()
        self.max_loaded_models = max_loaded_models
        self._client = client
        self._metrics = metrics
        self._sample = sample
        self._slots: dict[str, Slot] = {}
        self._placing = asyncio.Lock()
        self._closed = False
        self.instance = uuid.uuid4().hex
        """Names this boot of the neuron: epochs of another boot are never compared."""
        self.epoch = 0
        """Bumped by every change of a model's state (see :meth:`changed`)."""
        self._moved = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()

    def changed(self) -> None:
        """The state moved on: a new epoch, and every :meth:`watch` waiting wakes up."""
        self.epoch += 1
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def watch(self, epoch: int, wait: float) -> None:
        """Return once the epoch differs from ``epoch``, or after ``wait`` seconds."""
        if epoch != self.epoch:
            return
        moved = self._moved
        try:
            async with asyncio.timeout(wait):
                await moved.wait()
        except TimeoutError:
            pass

    def stamp(self, instance: str | None, epoch: int | None) -> int | None:
        """The epoch a command names, as this boot reads it: :data:`OTHER_BOOT` when it names
        another boot (even with no epoch: it was decided from that boot's state), else
        ``epoch`` (``instance`` absent: not checked, as older senders send none)."""
        if instance is not None and instance != self.instance:
            return OTHER_BOOT
        return epoch

    def fence(self, epoch: int | None) -> None:
        """Raise :class:`StaleEpoch` if ``epoch`` is given and the state has moved on from it.

        Every state-changing command calls this after its idempotent answers and before it
        changes anything, with no await in between.
        """
        if epoch == OTHER_BOOT:
            raise StaleEpoch(
                f"this neuron restarted (instance {self.instance}) since the command was "
                "decided; plan again from the state in this answer"
            )
        if epoch is not None and epoch != self.epoch:
            raise StaleEpoch(
                f"this neuron's state has moved on (epoch {self.epoch}, the command was "
                f"decided at {epoch}); plan again from the state in this answer"
            )

    def get(self, model_id: str) -> Slot | None:
        return self._slots.get(model_id)

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def __len__(self) -> int:
        return len(self._slots)

    def engines(self) -> list[Slot]:
        """Slots that hold (or are about to hold, or still release) an engine: not failed."""
        return [s for s in self._slots.values() if s.state is not State.FAILED]

    def awake(self) -> list[Slot]:
        """Engines counted by ``max_loaded_models``: all but failed and sleeping ones."""
        return [s for s in self.engines() if s.state is not State.SLEEPING]

    def sleepers(self) -> list[Slot]:
        return [s for s in self._slots.values() if s.state is State.SLEEPING]

    def host_ram_used_mb(self) -> int:
        """Host RAM charged for sleepers: every engine that has begun a sleep since it started
        (a sleep under way included)."""
        return sum(s.host_ram_mb for s in self.engines())

    def sleep_info(self) -> dict[str, Any]:
        """For ``/health`` and ``/discovery``."""
        conf = self.sleep_settings
        return {
            "enabled": conf.enabled,
            "level": conf.level,
            "canary": conf.canary,
            "sleeping_models": len(self.sleepers()),
            "max_sleeping_models": conf.max_sleeping_models,
            "host_ram_budget_mb": conf.host_ram_budget_mb,
            "host_ram_used_mb": self.host_ram_used_mb(),
        }

    async def load(
        self, spec: ModelSpec, *, epoch: int | None = None, evict: tuple[str, ...] = ()
    ) -> Slot:
        """:meth:`place`, for callers that need only the ready slot."""
        slot, _ = await self.place(spec, epoch=epoch, evict=evict)
        return slot

    async def place(
        self, spec: ModelSpec, *, epoch: int | None = None, evict: tuple[str, ...] = ()
    ) -> tuple[Slot, tuple[str, ...] | None]:
        """Load ``spec`` (or join/return the existing engine); returns the ready slot.

        ``evict``: models to unload first to make room, in the same step (they must be ready
        and idle). The new model shows as ``loading`` from the moment they start unloading, so
        anyone reading the state sees where it goes. ``epoch``: see :meth:`fence`.

        Returns the ready slot, and the models this call evicted (``None``: it joined a load
        in progress or found the model ready, and started nothing).

        Raises UnknownHarness (400), DoesNotFit (409), StaleEpoch (409), ModelBusy (409),
        LoadCancelled (409), EngineFailed (502).
        """
        if spec.harness not in HARNESSES:
            raise UnknownHarness(
                f"unknown harness {spec.harness!r}; this neuron has {list(HARNESSES)}",
                param="harness",
            )
        while True:
            if self._closed:
                raise ShuttingDown("this neuron is shutting down; load the model elsewhere")
            slot = self._slots.get(spec.model_id)
            if slot is not None and slot.state is State.READY:
                return slot, None
            if slot is not None and slot.state is State.LOADING:
                return await self._join(slot), None
            if slot is not None and slot.state in ASLEEP:
                return await self.wake(spec.model_id, epoch=epoch, evict=evict)
            self.fence(epoch)
            if slot is not None and slot.state is State.UNLOADING:
                await slot.gone.wait()  # then start afresh
                continue
            async with self._placing:  # placement must see the reservations of earlier loads
                samples = await self._sample()
                if self._closed or self._slots.get(spec.model_id) is not slot:
                    continue  # shut down, or someone else acted on this model meanwhile
                self.fence(epoch)
                victims = self._victims(evict, spec.model_id)
                slot = self._place(spec, samples, victims)
            return await self._join(slot), tuple(v.model_id for v in victims)

    def _victims(self, evict: tuple[str, ...], model_id: str) -> list[Slot]:
        victims = []
        for name in dict.fromkeys(evict):
            victim = self._slots.get(name)
            asleep = victim is not None and victim.state is State.SLEEPING
            if name == model_id or victim is None or not (asleep or victim.state is State.READY):
                raise StaleEpoch(f"cannot evict {name!r}: it is not ready on this neuron")
            # A sleeper's requests are those waiting for its wake: it is as busy as a ready one.
            if victim.in_flight:
                raise ModelBusy(
                    f"cannot evict {name!r}: {victim.in_flight} request(s) in flight",
                    param="evict",
                )
            victims.append(victim)  # a sleeper evicted is stopped, for host RAM
        return victims

    def _place(
        self, spec: ModelSpec, samples: list[DeviceSample], victims: list[Slot] | None = None
    ) -> Slot:
        victims = victims or []
        limit = self.max_loaded_models
        held = [s for s in self.awake() if s not in victims]
        if limit is not None and len(held) >= limit:
            names = ", ".join(sorted(s.model_id for s in held))
            raise DoesNotFit(
                f"{spec.model_id} does not fit: this neuron holds at most {limit} model(s) "
                f"and has {len(held)} ({names}); unload one first"
            )
        devices = choose_devices(
            spec, self._less_reservations(samples, victims), self._harness.gpu_memory_utilization
        )
        slot = Slot(spec=spec, engine=self._engine(spec, devices))
        slot.reserved_mb = _reservation(spec, devices, samples, self._harness)
        stops = [self._demote(victim, spec.model_id) for victim in victims]
        self._slots[spec.model_id] = slot
        slot.start = asyncio.create_task(self._start(slot, stops), name=f"load {spec.model_id}")
        self._publish()
        return slot

    def _engine(self, spec: ModelSpec, devices: list[int] | None) -> EngineProcess:
        return EngineProcess(
            spec,
            self._harness,
            self._client,
            devices=devices,
            on_exit=self._engine_exited,
            sleep_mode=self.sleep_settings.enabled,
        )

    def _demote(self, victim: Slot, model_id: str) -> asyncio.Task[Any]:
        """Make room: ``victim`` (ready and idle, or asleep) sleeps if the budgets allow,
        else stops; the returned task ends when its memory is given back."""
        spare = self._spare_sleepers(victim, model_id) if victim.state is State.READY else None
        if spare is not None:
            log.info("putting %s to sleep for %s", victim.model_id, model_id)
            stops = []
            for sleeper in spare:  # the least recently used sleepers give it their room
                log.info("stopping %s (asleep) for %s to sleep", sleeper.model_id, victim.model_id)
                sleeper.state = State.UNLOADING
                stops.append(self._stop_later(sleeper, State.SLEEPING))
            return self._begin_sleep(victim, self.sleep_settings.level, stops)
        log.info("evicting %s for %s", victim.model_id, model_id)
        was, victim.state = victim.state, State.UNLOADING
        # Its own task: a cancelled load must not leave an engine half stopped.
        return self._stop_later(victim, was)

    async def _join(self, slot: Slot, start: asyncio.Task[Any] | None = None) -> Slot:
        start = start or slot.start
        if start is None:
            return slot
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if start.cancelled() and not (current and current.cancelling()):
                what = "load" if start is slot.start else "wake"
                raise LoadCancelled(
                    f"{what} of {slot.model_id} was cancelled by an unload"
                ) from None
            raise
        return slot

    async def _start(self, slot: Slot, stops: list[asyncio.Task[Any]] | None = None) -> None:
        began = time.monotonic()
        if stops:
            await asyncio.wait(stops)  # the room first
        try:
            await slot.engine.start()
        except EngineFailed as exc:
            slot.state, slot.error = State.FAILED, exc.message
            self._metrics.load_failures.labels(slot.model_id).inc()
            self._publish()
            raise
        except Exception as exc:  # e.g. no file descriptors left to start a process
            log.exception("starting the engine for %s failed", slot.model_id)
            slot.state, slot.error = State.FAILED, f"engine could not be started: {exc!r}"
            self._metrics.load_failures.labels(slot.model_id).inc()
            self._publish()
            raise EngineFailed(slot.error) from None
        slot.state = State.READY
        slot.ready_at = time.monotonic()
        slot.load_s = round(time.monotonic() - began, 3)
        self._metrics.load_seconds.labels(slot.model_id).observe(time.monotonic() - began)
        self._publish()

    # -- the residency ladder ---------------------------------------------------------------

    def _host_ram(self, slot: Slot) -> int:
        """What ``slot``'s weights take in host RAM once it has slept (MiB, an estimate)."""
        return slot.spec.vram_mb or slot.reserved_mb or self.sleep_settings.host_ram_per_model_mb

    def _sleep_refusal(
        self, slot: Slot, stopping: Sequence[Slot] = (), coming: str | None = None
    ) -> NoSleep | None:
        """Why ``slot`` may not go to sleep now for lack of budget (``None``: it may), once
        the sleepers in ``stopping`` are stopped. ``coming``: a sleeper being woken, whose
        room this sleep makes: it leaves the count of sleepers as ``slot`` joins it (its host
        RAM stays counted: vLLM keeps it pinned after a wake)."""
        conf = self.sleep_settings
        if not conf.enabled:
            return NoSleep("sleep mode is off on this neuron ([sleep] enabled = false)")
        limit = conf.max_sleeping_models
        asleep = sum(1 for s in self.sleepers() if s.model_id != coming)
        if limit is not None and asleep - len(stopping) >= limit:
            return NoSleep(f"this neuron keeps at most {limit} sleeping model(s)")
        if not slot.host_ram_mb:  # not charged yet (charged engines keep theirs)
            freed = sum(s.host_ram_mb for s in stopping)
            used, need = self.host_ram_used_mb() - freed, self._host_ram(slot)
            if used + need > conf.host_ram_budget_mb:
                return NoSleep(
                    f"{slot.model_id} needs {need} MiB of host RAM to sleep; sleepers hold "
                    f"{used} of the {conf.host_ram_budget_mb} MiB budget"
                )
        return None

    def _spare_sleepers(self, victim: Slot, coming: str | None = None) -> list[Slot] | None:
        """The fewest least recently used idle sleepers to stop so that ``victim`` may sleep
        (``[]``: it may as things are; ``None``: it may not even then). ``coming``: the model
        the room is for, never one of them (a sleeper about to wake is still ``sleeping``)."""
        if not self.sleep_settings.enabled:
            return None
        order = sorted(
            (
                s
                for s in self.sleepers()
                if s.model_id != coming and not s.in_flight and (s.op is None or s.op.done())
            ),
            key=lambda s: s.used or s.ready_at or 0.0,
        )
        chosen: list[Slot] = []
        while self._sleep_refusal(victim, chosen, coming) is not None:
            if not order:
                return None
            chosen.append(order.pop(0))
        return chosen

    def _needs_canary(self, level: int) -> bool:
        return level >= 2 or self.sleep_settings.canary

    async def sleep(
        self,
        model_id: str,
        *,
        epoch: int | None = None,
        level: int | None = None,
        idle_at_least: float | None = None,
    ) -> Slot:
        """Put a ready, idle model to sleep (or join its sleep, or find it asleep).

        Every caller of one sleep gets its outcome, the one that started it and those that
        joined it alike. Raises ModelNotFound (404), StaleEpoch (409: not ready, or the
        epoch moved on), ModelBusy (409: requests in flight, or used within
        ``idle_at_least`` seconds), NoSleep (409: sleep off, or its budgets full: stop it
        instead), LoadCancelled (409: unloaded during the sleep), EngineFailed (502: the
        engine failed to sleep, and was stopped).
        """
        slot = self._slots.get(model_id)
        if slot is None:
            raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
        if slot.state is State.SLEEPING:  # join its sleep; its outcome is this one's
            return await self._slept(slot, slot.op)
        self.fence(epoch)
        if slot.state is not State.READY:
            raise StaleEpoch(f"cannot put {model_id!r} to sleep: it is {slot.state}")
        if slot.in_flight:
            raise ModelBusy(
                f"model {model_id!r} has {slot.in_flight} request(s) in flight", param="model_id"
            )
        _require_idle(slot, idle_at_least, "sleep")
        refusal = self._sleep_refusal(slot)
        if refusal is not None:
            raise refusal
        return await self._slept(slot, self._begin_sleep(slot, level or self.sleep_settings.level))

    async def _slept(self, slot: Slot, op: asyncio.Task[str | None] | None) -> Slot:
        """Wait for ``op``, ``slot``'s sleep, and give its outcome to whoever asked for it (the
        one that started it, and every one that joined it): the slot if it slept (it may
        have woken or be unloading since), else why not.

        The wait never cancels ``op``: a caller that goes away leaves the sleep running."""
        if op is not None and not op.done():
            await asyncio.wait({op})
        if slot.error is not None:  # stopped (or its engine exited) instead
            raise EngineFailed(
                f"model {slot.model_id!r} failed to go to sleep and was stopped: {slot.error}"
            )
        if op is not None and op.cancelled():
            raise LoadCancelled(f"sleep of {slot.model_id} was cancelled by an unload")
        failed = op.result() if op is not None else None
        if failed is not None:  # a wake was waiting for it: the model is not stopped
            raise EngineFailed(f"model {slot.model_id!r} failed to go to sleep: {failed}")
        return slot

    def _begin_sleep(
        self, slot: Slot, level: int, before: Sequence[asyncio.Task[Any]] = ()
    ) -> asyncio.Task[str | None]:
        slot.state, slot.sleep_level = State.SLEEPING, level
        if not slot.host_ram_mb:  # charged now, before the next sleep's budget check
            slot.host_ram_mb = self._host_ram(slot)
        slot.op = asyncio.create_task(
            self._sleep(slot, level, before), name=f"sleep {slot.model_id}"
        )
        self._publish()
        return slot.op

    async def _sleep(
        self, slot: Slot, level: int, before_it: Sequence[asyncio.Task[Any]] = ()
    ) -> str | None:
        """Put ``slot``'s engine to sleep; returns why it failed (``None``: it slept, or an
        unload cut it short), for :meth:`_slept` to give every caller."""
        conf, engine = self.sleep_settings, slot.engine
        if before_it:
            await asyncio.wait(before_it)  # the sleepers that give it their host RAM
        began = time.monotonic()
        try:
            before = await self._sample() if engine.devices else []
            if self._needs_canary(level) and slot.canary is None:
                slot.canary = await engine_sleep.canary(
                    self._client, engine.url, slot.model_id, conf.canary_prompt, conf.timeout
                )
            await engine_sleep.sleep(self._client, engine.url, level, conf.timeout)
            after = await self._sample() if engine.devices else []
        except EngineFailed as exc:
            if self._slots.get(slot.model_id) is not slot or slot.engine is not engine:
                return None  # unloaded meanwhile: its engine was stopped under the call
            if slot.state is State.WAKING:
                # A wake waits for this sleep: it goes on (and loads afresh if the engine
                # cannot wake); the engine, maybe half offloaded, stays charged.
                log.warning(
                    "%s failed to go to sleep (%s) while a wake waited for it",
                    slot.model_id,
                    exc.message,
                )
                self._metrics.sleeps.labels(slot.model_id, "failed").inc()
                return exc.message
            if slot.state is not State.SLEEPING:
                return None  # unloading: that unload stops it
            log.warning("%s failed to go to sleep (%s); stopping it", slot.model_id, exc.message)
            self._metrics.sleeps.labels(slot.model_id, "failed").inc()
            slot.state, slot.error = State.UNLOADING, exc.message
            if not slot.slept:
                slot.host_ram_mb = 0  # it never held the weights in host RAM: uncharged
            slot.op = None  # else the stop would cancel this task, and itself with it
            await self._stop_later(slot, State.SLEEPING)
            return exc.message
        slot.slept = True
        slot.sleep_vram_mb = _kept_vram(slot, before, after, conf.sleeper_vram_mb)
        self._metrics.sleeps.labels(slot.model_id, "ok").inc()
        log.info(
            "%s asleep (level %d) in %.2fs; keeps %d MiB of GPU memory",
            slot.model_id,
            level,
            time.monotonic() - began,
            slot.sleep_vram_mb,
        )
        self._publish()
        return None

    async def wake(
        self,
        model_id: str,
        *,
        epoch: int | None = None,
        evict: tuple[str, ...] = (),
        make_room: bool = False,
    ) -> tuple[Slot, tuple[str, ...] | None]:
        """Wake a sleeping model (or join its wake, or find it awake).

        ``evict``: models to put to sleep (or stop) first for room, as for a load;
        ``make_room``: else this neuron picks them itself (the least recently used idle
        ready models; a request that reached a sleeper). Returns the ready slot and the
        models this call demoted (``None``: it joined a wake or found the model awake).
        Raises ModelNotFound (404), StaleEpoch, ModelBusy, DoesNotFit (409), LoadCancelled
        (409: unloaded meanwhile), EngineFailed (502: the engine failed to wake *and* to
        load afresh).
        """
        while True:
            slot = self._slots.get(model_id)
            if slot is None:
                raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
            if slot.state is State.READY:
                return slot, None
            if slot.state is State.WAKING and slot.op is not None:
                await self._join(slot, slot.op)
                return self._woken(slot), None
            if slot.state is not State.SLEEPING:
                raise StaleEpoch(f"cannot wake {model_id!r}: it is {slot.state}")
            self.fence(epoch)
            async with self._placing:
                samples = await self._sample() if slot.engine.devices else []
                if self._slots.get(model_id) is not slot or slot.state is not State.SLEEPING:
                    continue
                self.fence(epoch)
                victims = self._victims(evict, model_id)
                victims += self._room_for(slot, victims, samples, make_room)
                stops = [self._demote(victim, model_id) for victim in victims]
                slept = slot.op
                slot.state = State.WAKING
                slot.op = asyncio.create_task(
                    self._wake(slot, [*stops, *([slept] if slept else [])]),
                    name=f"wake {model_id}",
                )
                self._publish()
            await self._join(slot, slot.op)
            return self._woken(slot), tuple(v.model_id for v in victims)

    def _woken(self, slot: Slot) -> Slot:
        if self._slots.get(slot.model_id) is not slot or slot.state is State.UNLOADING:
            raise LoadCancelled(f"wake of {slot.model_id} was cancelled by an unload")
        if slot.state is not State.READY:
            reason = (slot.error or "it was unloaded").splitlines()[0]
            raise EngineFailed(f"model {slot.model_id!r} could not be woken: {reason}")
        return slot

    def _room_for(
        self, slot: Slot, victims: list[Slot], samples: list[DeviceSample], make_room: bool
    ) -> list[Slot]:
        """More victims for ``slot`` to wake (only with ``make_room``), or DoesNotFit."""
        limit = self.max_loaded_models
        awake = [s for s in self.awake() if s not in victims and s is not slot]
        more: list[Slot] = []
        if limit is not None and len(awake) + 1 > limit:
            need = len(awake) + 1 - limit
            kept = [s for s in awake if self._kept_awake(s)]
            idle = sorted(
                (s for s in awake if s.state is State.READY and not s.in_flight and s not in kept),
                key=lambda s: s.used or s.ready_at or 0.0,
            )
            if not make_room or len(idle) < need:
                names = ", ".join(sorted(s.model_id for s in awake))
                why = (
                    f" ({', '.join(sorted(s.model_id for s in kept))} kept awake: default "
                    "models, or woken less than [sleep] min_residency ago)"
                    if kept and make_room
                    else ""
                )
                raise DoesNotFit(
                    f"{slot.model_id} cannot wake: this neuron keeps at most {limit} model(s) "
                    f"awake and has {len(awake)} ({names}); put one to sleep first{why}"
                )
            more = idle[:need]
        if slot.engine.devices:
            left = self._less_reservations(samples, victims + more)
            free = {s.index: s.vram_free_mb for s in left}
            back = (slot.reserved_mb - slot.sleep_vram_mb) // len(slot.engine.devices)
            short = [d for d in slot.engine.devices if free.get(d, 0) < back]
            if short:
                raise DoesNotFit(
                    f"{slot.model_id} cannot wake: GPU(s) {short} lack the {back} MiB "
                    "it gave back when it slept"
                )
        return more

    def _kept_awake(self, slot: Slot) -> bool:
        """Never a victim of this neuron's own room-making (a command's ``evict`` may still
        name it: the sender decided that, with its own pins and residency)."""
        return slot.model_id in self.keep_awake or slot.settling(self.sleep_settings.min_residency)

    async def _wake(self, slot: Slot, before: list[asyncio.Task[Any]]) -> None:
        conf, engine = self.sleep_settings, slot.engine
        began = time.monotonic()  # as a load's: its wait for room counts (see Slot.wake_s)
        if before:
            await asyncio.wait(before)  # its own sleep, and the room, first
        level = slot.sleep_level or conf.level
        outcome = "failed"
        try:
            await engine_sleep.wake(self._client, engine.url, conf.timeout)
            if self._needs_canary(level) and slot.canary is not None:
                token = await engine_sleep.canary(
                    self._client, engine.url, slot.model_id, conf.canary_prompt, conf.timeout
                )
                if token != slot.canary:
                    outcome = "canary_mismatch"
                    raise EngineFailed(
                        f"canary mismatch after a level-{level} wake: "
                        f"{token!r}, recorded {slot.canary!r}"
                    )
        except EngineFailed as exc:
            if slot.state is not State.WAKING:
                return  # unloaded meanwhile
            log.warning("waking %s failed (%s); loading it afresh", slot.model_id, exc.message)
            self._metrics.wakes.labels(slot.model_id, outcome).inc()
            await self._reload(slot)
            return
        if not self._waking(slot):
            return  # unloaded meanwhile (a forced unload waits for the request that woke it)
        slot.state, slot.sleep_level = State.READY, None
        slot.ready_at = slot.woken_at = time.monotonic()
        slot.wake_s = round(time.monotonic() - began, 3)
        self._metrics.wakes.labels(slot.model_id, "ok").inc()
        self._metrics.wake_seconds.labels(slot.model_id).observe(slot.wake_s)
        log.info("%s awake in %.2fs", slot.model_id, slot.wake_s)
        self._publish()

    def _waking(self, slot: Slot) -> bool:
        """Whether ``slot`` is still the registered one and still waking: an unload that came
        during the wake must not be overwritten by ``ready``."""
        return self._slots.get(slot.model_id) is slot and slot.state is State.WAKING

    async def _reload(self, slot: Slot) -> None:
        """Stop ``slot``'s engine and start a fresh one on the same devices (a cold load)."""
        began = time.monotonic()
        old = slot.engine
        await old.stop()
        self._metrics.engine_exits.labels(slot.model_id, "stopped").inc()
        if not self._waking(slot):
            return  # unloaded meanwhile: start nothing
        slot.engine = self._engine(slot.spec, old.devices)
        slot.slept, slot.host_ram_mb, slot.canary, slot.sleep_level = False, 0, None, None
        slot.woken_at = slot.wake_s = None  # a cold start, not a wake
        self._publish()
        try:
            await slot.engine.start()
        except Exception as exc:
            message = exc.message if isinstance(exc, EngineFailed) else repr(exc)
            slot.state, slot.error = State.FAILED, f"reload after a failed wake: {message}"
            self._metrics.load_failures.labels(slot.model_id).inc()
            self._publish()
            return
        if not self._waking(slot):
            return  # unloaded meanwhile: the unload stops the new engine
        slot.state = State.READY
        slot.ready_at = time.monotonic()
        slot.load_s = round(time.monotonic() - began, 3)
        self._metrics.load_seconds.labels(slot.model_id).observe(slot.load_s)
        self._publish()

    async def unload(
        self,
        model_id: str,
        *,
        epoch: int | None = None,
        busy: Busy = Busy.CUT,
        patience: float = 0.0,
        idle_at_least: float | None = None,
    ) -> None:
        """Stop the model's engine and forget it.

        ``busy`` says what happens to requests in flight (``Busy.WAIT`` waits at most
        ``patience`` seconds for them, then cuts them). ``idle_at_least``: refuse (409
        ``model_busy``) if the model was used more recently than that many seconds ago, or
        is loading or waking (an idle unload that another replica's request has overtaken).
        Raises ModelNotFound (404), StaleEpoch (409), ModelBusy (409).
        """
        slot = self._slots.get(model_id)
        if slot is None:
            raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
        if slot.state is State.UNLOADING:
            await slot.gone.wait()  # the idempotent answer: whatever epoch it was decided at
            return
        self.fence(epoch)
        _require_idle(slot, idle_at_least, "unload")
        if slot.in_flight and busy is Busy.REFUSE:
            raise ModelBusy(
                f"model {model_id!r} has {slot.in_flight} request(s) in flight; unload it "
                "with force to stop it once they are done",
                param="model_id",
            )
        was = slot.state
        slot.state = State.UNLOADING
        self._publish()
        patience = patience if busy is Busy.WAIT else 0.0
        # Its own task: a caller that goes away must not leave the model half unloaded.
        await asyncio.shield(self._stop_later(slot, was, patience))

    def _stop_later(self, slot: Slot, was: State, patience: float = 0.0) -> asyncio.Task[None]:
        """Stop ``slot`` (already ``unloading``) in a task of its own, after its requests
        (at most ``patience`` seconds)."""
        stop = asyncio.create_task(self._finish_unload(slot, was, patience))
        self._stopping.add(stop)
        stop.add_done_callback(_forget(self._stopping, slot.model_id))
        return stop

    async def _finish_unload(self, slot: Slot, was: State, patience: float = 0.0) -> None:
        model_id = slot.model_id
        if patience and slot.in_flight:
            log.info("%s leaves routing; waiting for %d request(s)", model_id, slot.in_flight)
            try:
                async with asyncio.timeout(patience):
                    await slot.quiet.wait()
            except TimeoutError:
                log.warning(
                    "%s: %d request(s) still in flight after %gs are cut off",
                    model_id,
                    slot.in_flight,
                    patience,
                )
        try:
            if was is State.LOADING and slot.start is not None:
                slot.start.cancel()
                # Let the start unwind first: it may be about to spawn the process.
                await asyncio.wait({slot.start})
            if was in ASLEEP and slot.op is not None and not slot.op.done():
                slot.op.cancel()
                await asyncio.wait({slot.op})
            await slot.engine.stop()
        finally:
            if self._slots.get(model_id) is slot:
                del self._slots[model_id]
            slot.gone.set()
            if was is not State.FAILED:
                self._metrics.engine_exits.labels(model_id, "stopped").inc()
            self._publish()
        log.info("unloaded %s", model_id)

    async def unload_all(self) -> None:
        """Unload every model concurrently, and refuse loads from now on (shutdown).

        A failure is logged and the rest still go.
        """
        self._closed = True
        if not self._slots:
            return
        ids = list(self._slots)
        results = await asyncio.gather(*(self.unload(i) for i in ids), return_exceptions=True)
        for model_id, result in zip(ids, results, strict=True):
            if isinstance(result, Exception):
                log.warning("unloading %s failed: %s", model_id, result)

    def _engine_exited(self, engine: EngineProcess) -> None:
        slot = self._slots.get(engine.spec.model_id)
        if slot is None or slot.engine is not engine or slot.state not in ALIVE:
            return  # a start or wake in progress reports its own failure
        slot.state = State.FAILED
        slot.error = engine.failure(f"engine exited with status {engine.returncode}")
        self._metrics.engine_exits.labels(slot.model_id, "crashed").inc()
        self._publish()

    def _less_reservations(
        self, samples: list[DeviceSample], victims: list[Slot] | None = None
    ) -> list[DeviceSample]:
        """Device samples less what engines still starting will claim (not yet visible),
        plus what the ``victims`` (about to be evicted) give back."""
        pending: dict[int, int] = {}
        for slot in self._slots.values():
            if slot.state is State.LOADING and slot.engine.devices:
                share = slot.reserved_mb // len(slot.engine.devices)
                for d in slot.engine.devices:
                    pending[d] = pending.get(d, 0) + share
        for slot in victims or []:
            if slot.engine.devices:
                share = slot.reserved_mb // len(slot.engine.devices)
                for d in slot.engine.devices:
                    pending[d] = pending.get(d, 0) - share
        return [
            replace(
                s,
                vram_used_mb=max(0, s.vram_used_mb + pending.get(s.index, 0)),
                vram_free_mb=max(0, s.vram_free_mb - pending.get(s.index, 0)),
            )
            for s in samples
        ]

    def _publish(self) -> None:
        self.changed()
        counts: dict[str, int] = {}
        for slot in self._slots.values():
            counts[slot.state] = counts.get(slot.state, 0) + 1
        self._metrics.set_states(counts)


def _forget(tasks: set[asyncio.Task[None]], model_id: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("stopping %s failed: %r", model_id, exc)

    return done


def _reservation(
    spec: ModelSpec,
    devices: list[int] | None,
    samples: list[DeviceSample],
    harness: VllmHarness,
) -> int:
    if not devices:
        return 0
    utilization = spec.gpu_memory_utilization or harness.gpu_memory_utilization
    totals = {s.index: s.vram_total_mb for s in samples}
    claimed = sum(utilization * totals.get(d, 0) for d in devices)
    return int(max(claimed, spec.vram_mb or 0))


def _kept_vram(
    slot: Slot, before: list[DeviceSample], after: list[DeviceSample], estimate: int
) -> int:
    """The GPU memory ``slot`` keeps asleep: its reservation less what NVML saw its sleep
    free on its devices, else ``estimate`` (never more than it held)."""
    devices = set(slot.engine.devices or [])
    if not devices:
        return 0
    if before and after:
        freed = sum(s.vram_used_mb for s in before if s.index in devices) - sum(
            s.vram_used_mb for s in after if s.index in devices
        )
        if freed > 0:
            return max(0, slot.reserved_mb - freed)
    return min(slot.reserved_mb, estimate)


def _require_idle(slot: Slot, idle_at_least: float | None, command: str) -> None:
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
