"""The :class:`Registry`: this neuron's one front door for what its models are and every
command that changes them (load, sleep, wake, unload), each answered from the state where it
is idempotent, fenced, and single-flight per model (the contract is in
:mod:`neuron.registry`). It owns the placement lock and the cold start; the residency ladder
(:mod:`~neuron.registry.ladder`), unloading (:mod:`~neuron.registry.unload`), room-making
(:mod:`~neuron.registry.room`), the slots by model (:mod:`~neuron.registry.table`) and the
epoch (:mod:`~neuron.registry.fence`) are its parts."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from neuron.discovery import DeviceSample
from neuron.engine import HARNESSES, EngineProcess
from neuron.errors import (
    DoesNotFit,
    EngineFailed,
    LoadCancelled,
    ModelNotFound,
    ShuttingDown,
    StaleEpoch,
    UnknownHarness,
)
from neuron.metrics import NeuronMetrics
from neuron.placement import choose_devices
from neuron.registry import room
from neuron.registry.fence import Fence
from neuron.registry.ladder import Ladder, Sampler
from neuron.registry.slot import ALIVE, ASLEEP, Busy, Slot, State, join
from neuron.registry.table import Table
from neuron.registry.unload import Unloads
from neuron.settings import ModelSpec, SleepSettings, VllmHarness

log = logging.getLogger("neuron.registry")


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
        sleep_settings = sleep or SleepSettings()
        self.max_loaded_models = max_loaded_models
        self._client = client
        self._metrics = metrics
        self._sample = sample
        self._placing = asyncio.Lock()
        self._closed = False
        self._fence = Fence()
        self._table = Table(self._fence, metrics)
        self._unloads = Unloads(self._table, metrics)
        self._ladder = Ladder(
            self._table, self._unloads, client, metrics, sample, sleep_settings, self._engine
        )

    @property
    def sleep_settings(self) -> SleepSettings:
        """The ``[sleep]`` settings: the ladder's own, so that one object decides everywhere."""
        return self._ladder.settings

    @property
    def instance(self) -> str:
        """Names this boot of the neuron: epochs of another boot are never compared."""
        return self._fence.instance

    @property
    def epoch(self) -> int:
        """Bumped by every change of a model's state (see :meth:`changed`)."""
        return self._fence.epoch

    def changed(self) -> None:
        """The state moved on: a new epoch, and every :meth:`watch` waiting wakes up."""
        self._fence.changed()

    async def watch(self, epoch: int, wait: float) -> None:
        """Return once the epoch differs from ``epoch``, or after ``wait`` seconds."""
        await self._fence.watch(epoch, wait)

    def stamp(self, instance: str | None, epoch: int | None) -> int | None:
        """See :meth:`Fence.stamp <neuron.registry.fence.Fence.stamp>`."""
        return self._fence.stamp(instance, epoch)

    def fence(self, epoch: int | None) -> None:
        """Raise :class:`StaleEpoch` if ``epoch`` is given and the state has moved on from it
        (:meth:`Fence.check <neuron.registry.fence.Fence.check>`)."""
        self._fence.check(epoch)

    def get(self, model_id: str) -> Slot | None:
        return self._table.get(model_id)

    def slots(self) -> list[Slot]:
        return self._table.slots()

    def __len__(self) -> int:
        return len(self._table)

    def engines(self) -> list[Slot]:
        """Slots that hold (or are about to hold, or still release) an engine: not failed."""
        return self._table.engines()

    def awake(self) -> list[Slot]:
        """Engines counted by ``max_loaded_models``: all but failed and sleeping ones."""
        return self._table.awake()

    def sleepers(self) -> list[Slot]:
        return self._table.sleepers()

    def host_ram_used_mb(self) -> int:
        """Host RAM charged for sleepers: every engine that has begun a sleep since it started
        (a sleep under way included)."""
        return self._table.host_ram_used_mb()

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
            slot = self._table.get(spec.model_id)
            if slot is not None and slot.state is State.READY:
                return slot, None
            if slot is not None and slot.state is State.LOADING:
                return await join(slot), None
            if slot is not None and slot.state in ASLEEP:
                return await self.wake(spec.model_id, epoch=epoch, evict=evict)
            self.fence(epoch)
            if slot is not None and slot.state is State.UNLOADING:
                await slot.gone.wait()  # then start afresh
                continue
            async with self._placing:  # placement must see the reservations of earlier loads
                samples = await self._sample()
                if self._closed or self._table.get(spec.model_id) is not slot:
                    continue  # shut down, or someone else acted on this model meanwhile
                self.fence(epoch)
                victims = room.evicted(self._table, evict, spec.model_id)
                slot = self._place(spec, samples, victims)
            return await join(slot), tuple(v.model_id for v in victims)

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
            spec,
            room.less_reservations(self._table, samples, victims),
            self._harness.gpu_memory_utilization,
        )
        try:
            engine = self._engine(spec, devices)
        except EngineFailed:
            self._metrics.load_failures.labels(spec.model_id).inc()
            raise
        slot = Slot(spec=spec, engine=engine)
        slot.reserved_mb = room.reservation(spec, devices, samples, self._harness)
        stops = [self._ladder.demote(victim, spec.model_id) for victim in victims]
        self._table.add(slot)
        slot.start = asyncio.create_task(self._start(slot, stops), name=f"load {spec.model_id}")
        self._table.publish()
        return slot

    def _engine(
        self, spec: ModelSpec, devices: list[int] | None, replacing: Slot | None = None
    ) -> EngineProcess:
        """A new engine for ``spec`` (not started), on a port none of this neuron's other
        engines has (``replacing``'s, stopped, may be taken again); EngineFailed (502) when no
        port is free (``[harness.vllm] engine_ports``)."""
        try:
            return EngineProcess(
                spec,
                self._harness,
                self._client,
                devices=devices,
                on_exit=self._engine_exited,
                sleep_mode=self.sleep_settings.enabled,
                taken={s.engine.port for s in self._table.engines() if s is not replacing},
            )
        except OSError as exc:
            hint = ""
            if self._harness.engine_ports is not None:
                hint = "; widen [harness.vllm] engine_ports or unload a model"
            raise EngineFailed(
                f"cannot start an engine for {spec.model_id}: {exc.strerror or exc}{hint}"
            ) from exc

    async def _start(self, slot: Slot, stops: list[asyncio.Task[Any]] | None = None) -> None:
        began = time.monotonic()
        if stops:
            await asyncio.wait(stops)  # the room first
        try:
            await slot.engine.start()
        except EngineFailed as exc:
            slot.state, slot.error = State.FAILED, exc.message
            self._metrics.load_failures.labels(slot.model_id).inc()
            self._table.publish()
            raise
        except Exception as exc:  # e.g. no file descriptors left to start a process
            log.exception("starting the engine for %s failed", slot.model_id)
            slot.state, slot.error = State.FAILED, f"engine could not be started: {exc!r}"
            self._metrics.load_failures.labels(slot.model_id).inc()
            self._table.publish()
            raise EngineFailed(slot.error) from None
        slot.state = State.READY
        slot.ready_at = time.monotonic()
        slot.load_s = round(time.monotonic() - began, 3)
        self._metrics.load_seconds.labels(slot.model_id).observe(time.monotonic() - began)
        self._table.publish()

    async def sleep(
        self,
        model_id: str,
        *,
        epoch: int | None = None,
        level: int | None = None,
        idle_at_least: float | None = None,
    ) -> Slot:
        """Put a ready, idle model to sleep (or join its sleep, or find it asleep): see
        :meth:`Ladder.sleep <neuron.registry.ladder.Ladder.sleep>`."""
        return await self._ladder.sleep(
            model_id, epoch=epoch, level=level, idle_at_least=idle_at_least
        )

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
            slot = self._table.get(model_id)
            if slot is None:
                raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
            if slot.state is State.READY:
                return slot, None
            if slot.state is State.WAKING and slot.op is not None:
                await join(slot, slot.op)
                return self._woken(slot), None
            if slot.state is not State.SLEEPING:
                raise StaleEpoch(f"cannot wake {model_id!r}: it is {slot.state}")
            self.fence(epoch)
            async with self._placing:
                samples = await self._sample() if slot.engine.devices else []
                if self._table.get(model_id) is not slot or slot.state is not State.SLEEPING:
                    continue
                self.fence(epoch)
                victims = room.evicted(self._table, evict, model_id)
                victims += room.room_to_wake(
                    self._table,
                    slot,
                    victims,
                    samples,
                    make_room,
                    self.max_loaded_models,
                    self._kept_awake,
                )
                stops = [self._ladder.demote(victim, model_id) for victim in victims]
                slept = slot.op
                slot.state = State.WAKING
                slot.op = asyncio.create_task(
                    self._ladder.wake(slot, [*stops, *([slept] if slept else [])]),
                    name=f"wake {model_id}",
                )
                self._table.publish()
            await join(slot, slot.op)
            return self._woken(slot), tuple(v.model_id for v in victims)

    def _woken(self, slot: Slot) -> Slot:
        if self._table.get(slot.model_id) is not slot or slot.state is State.UNLOADING:
            raise LoadCancelled(f"wake of {slot.model_id} was cancelled by an unload")
        if slot.state is not State.READY:
            reason = (slot.error or "it was unloaded").splitlines()[0]
            raise EngineFailed(f"model {slot.model_id!r} could not be woken: {reason}")
        return slot

    def _kept_awake(self, slot: Slot) -> bool:
        """Never a victim of this neuron's own room-making (a command's ``evict`` may still
        name it: the sender decided that, with its own pins and residency)."""
        return slot.model_id in self.keep_awake or slot.settling(self.sleep_settings.min_residency)

    async def unload(
        self,
        model_id: str,
        *,
        epoch: int | None = None,
        busy: Busy = Busy.CUT,
        patience: float = 0.0,
        idle_at_least: float | None = None,
    ) -> None:
        """Stop the model's engine and forget it: see
        :meth:`Unloads.unload <neuron.registry.unload.Unloads.unload>`."""
        await self._unloads.unload(
            model_id, epoch=epoch, busy=busy, patience=patience, idle_at_least=idle_at_least
        )

    async def unload_all(self) -> None:
        """Unload every model concurrently, and refuse loads from now on (shutdown).

        A failure is logged and the rest still go.
        """
        self._closed = True
        if not self._table:
            return
        ids = self._table.ids()
        results = await asyncio.gather(*(self.unload(i) for i in ids), return_exceptions=True)
        for model_id, result in zip(ids, results, strict=True):
            if isinstance(result, Exception):
                log.warning("unloading %s failed: %s", model_id, result)

    def _engine_exited(self, engine: EngineProcess) -> None:
        slot = self._table.get(engine.spec.model_id)
        if slot is None or slot.engine is not engine or slot.state not in ALIVE:
            return  # a start or wake in progress reports its own failure
        slot.state = State.FAILED
        slot.error = engine.failure(f"engine exited with status {engine.returncode}")
        self._metrics.engine_exits.labels(slot.model_id, "crashed").inc()
        self._table.publish()
