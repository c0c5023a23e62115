"""Which models this neuron has, in which state, and the single-flight load/unload of each.

States: ``loading → ready → unloading`` (then gone), and ``failed`` (start failed, or the
engine exited on its own; the entry stays, with the reason, until it is unloaded or loaded
again).

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
is answered from that state before the fence: it starts nothing, whatever its epoch. A
model with requests in flight is never unloaded or evicted, unless its unload was asked to
wait for them (``Busy.WAIT``) or the neuron is shutting down (``Busy.CUT``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import httpx

from neuron.discovery import DeviceSample
from neuron.engine import HARNESSES, EngineProcess
from neuron.engine.stats import UNKNOWN, EngineLoad
from neuron.errors import (
    DoesNotFit,
    EngineFailed,
    LoadCancelled,
    ModelBusy,
    ModelNotFound,
    ShuttingDown,
    StaleEpoch,
    UnknownHarness,
)
from neuron.metrics import NeuronMetrics
from neuron.placement import choose_devices
from neuron.settings import ModelSpec, VllmHarness

log = logging.getLogger("neuron.registry")


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


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
    state: State = State.LOADING
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

    def __post_init__(self) -> None:
        self.quiet.set()

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
            "vram_used_mb": self.reserved_mb if self.state is not State.FAILED else 0,
            "in_flight": self.in_flight,
            "last_used": self.last_used,
            "idle_s": self.idle_s(),
            "error": self.error,
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
    ) -> None:
        self._harness = harness
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

    def fence(self, epoch: int | None) -> None:
        """Raise :class:`StaleEpoch` if ``epoch`` is given and the state has moved on from it.

        Every state-changing command calls this after its idempotent answers and before it
        changes anything, with no await in between.
        """
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
            if name == model_id or victim is None or victim.state is not State.READY:
                raise StaleEpoch(f"cannot evict {name!r}: it is not ready on this neuron")
            if victim.in_flight:
                raise ModelBusy(
                    f"cannot evict {name!r}: {victim.in_flight} request(s) in flight",
                    param="evict",
                )
            victims.append(victim)
        return victims

    def _place(
        self, spec: ModelSpec, samples: list[DeviceSample], victims: list[Slot] | None = None
    ) -> Slot:
        victims = victims or []
        limit = self.max_loaded_models
        held = [s for s in self.engines() if s not in victims]
        if limit is not None and len(held) >= limit:
            names = ", ".join(sorted(s.model_id for s in held))
            raise DoesNotFit(
                f"{spec.model_id} does not fit: this neuron holds at most {limit} model(s) "
                f"and has {len(held)} ({names}); unload one first"
            )
        devices = choose_devices(
            spec, self._less_reservations(samples, victims), self._harness.gpu_memory_utilization
        )
        engine = EngineProcess(
            spec, self._harness, self._client, devices=devices, on_exit=self._engine_exited
        )
        slot = Slot(spec=spec, engine=engine)
        slot.reserved_mb = _reservation(spec, devices, samples, self._harness)
        stops = []
        for victim in victims:
            log.info("evicting %s for %s", victim.model_id, spec.model_id)
            victim.state = State.UNLOADING
            # Its own task: a cancelled load must not leave an engine half stopped.
            stops.append(self._stop_later(victim, State.READY))
        self._slots[spec.model_id] = slot
        slot.start = asyncio.create_task(self._start(slot, stops), name=f"load {spec.model_id}")
        self._publish()
        return slot

    async def _join(self, slot: Slot) -> Slot:
        start = slot.start
        if start is None:
            return slot
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if start.cancelled() and not (current and current.cancelling()):
                raise LoadCancelled(f"load of {slot.model_id} was cancelled by an unload") from None
            raise
        return slot

    async def _start(self, slot: Slot, stops: list[asyncio.Task[None]] | None = None) -> None:
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
        self._metrics.load_seconds.labels(slot.model_id).observe(time.monotonic() - began)
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
        ``model_busy``) if the model was used more recently than that many seconds ago (an
        idle unload that another replica's request has overtaken). Raises ModelNotFound
        (404), StaleEpoch (409), ModelBusy (409).
        """
        slot = self._slots.get(model_id)
        self.fence(epoch)
        if slot is None:
            raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
        if slot.state is State.UNLOADING:
            await slot.gone.wait()
            return
        idle = slot.idle_s()
        if idle_at_least is not None and idle is not None and idle < idle_at_least:
            raise ModelBusy(
                f"model {model_id!r} was used {idle:.1f}s ago (the unload asked for "
                f"{idle_at_least:g}s of idleness)",
                param="idle_at_least",
            )
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
        if slot is None or slot.engine is not engine or slot.state is not State.READY:
            return  # a start in progress reports its own failure
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
