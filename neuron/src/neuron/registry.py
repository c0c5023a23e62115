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
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    ModelNotFound,
    ShuttingDown,
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

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def info(self) -> dict[str, Any]:
        """The ``ModelInfo`` wire shape (``engine`` is an addition for operators and tests)."""
        return {
            "id": self.model_id,
            "harness": self.spec.harness,
            "status": str(self.state),
            "devices": self.engine.devices or [],
            "vram_used_mb": self.reserved_mb if self.state is not State.FAILED else 0,
            "in_flight": self.in_flight,
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

    def get(self, model_id: str) -> Slot | None:
        return self._slots.get(model_id)

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def __len__(self) -> int:
        return len(self._slots)

    def engines(self) -> list[Slot]:
        """Slots that hold (or are about to hold, or still release) an engine: not failed."""
        return [s for s in self._slots.values() if s.state is not State.FAILED]

    async def load(self, spec: ModelSpec) -> Slot:
        """Load ``spec`` (or join/return the existing engine); returns the ready slot.

        Raises UnknownHarness (400), DoesNotFit (409), LoadCancelled (409), EngineFailed (502).
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
                return slot
            if slot is not None and slot.state is State.LOADING:
                return await self._join(slot)
            if slot is not None and slot.state is State.UNLOADING:
                await slot.gone.wait()  # then start afresh
                continue
            async with self._placing:  # placement must see the reservations of earlier loads
                samples = await self._sample()
                if self._closed or self._slots.get(spec.model_id) is not slot:
                    continue  # shut down, or someone else acted on this model meanwhile
                slot = self._place(spec, samples)
            return await self._join(slot)

    def _place(self, spec: ModelSpec, samples: list[DeviceSample]) -> Slot:
        limit = self.max_loaded_models
        held = self.engines()
        if limit is not None and len(held) >= limit:
            names = ", ".join(sorted(s.model_id for s in held))
            raise DoesNotFit(
                f"{spec.model_id} does not fit: this neuron holds at most {limit} model(s) "
                f"and has {len(held)} ({names}); unload one first"
            )
        devices = choose_devices(
            spec, self._less_reservations(samples), self._harness.gpu_memory_utilization
        )
        engine = EngineProcess(
            spec, self._harness, self._client, devices=devices, on_exit=self._engine_exited
        )
        slot = Slot(spec=spec, engine=engine)
        slot.reserved_mb = _reservation(spec, devices, samples, self._harness)
        self._slots[spec.model_id] = slot
        slot.start = asyncio.create_task(self._start(slot), name=f"load {spec.model_id}")
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

    async def _start(self, slot: Slot) -> None:
        began = time.monotonic()
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
        self._metrics.load_seconds.labels(slot.model_id).observe(time.monotonic() - began)
        self._publish()

    async def unload(self, model_id: str) -> None:
        """Stop the model's engine and forget it. Raises ModelNotFound (404)."""
        slot = self._slots.get(model_id)
        if slot is None:
            raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
        if slot.state is State.UNLOADING:
            await slot.gone.wait()
            return
        was = slot.state
        slot.state = State.UNLOADING
        self._publish()
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

    def _less_reservations(self, samples: list[DeviceSample]) -> list[DeviceSample]:
        """Device samples less what engines still starting will claim (not yet visible)."""
        pending: dict[int, int] = {}
        for slot in self._slots.values():
            if slot.state is State.LOADING and slot.engine.devices:
                share = slot.reserved_mb // len(slot.engine.devices)
                for d in slot.engine.devices:
                    pending[d] = pending.get(d, 0) + share
        return [
            replace(
                s,
                vram_used_mb=s.vram_used_mb + pending.get(s.index, 0),
                vram_free_mb=max(0, s.vram_free_mb - pending.get(s.index, 0)),
            )
            for s in samples
        ]

    def _publish(self) -> None:
        counts: dict[str, int] = {}
        for slot in self._slots.values():
            counts[slot.state] = counts.get(slot.state, 0) + 1
        self._metrics.set_states(counts)


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
