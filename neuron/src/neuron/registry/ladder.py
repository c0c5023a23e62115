"""The residency ladder: ``ready → sleeping → waking → ready``. Putting an engine to sleep
(within the ``[sleep]`` budgets: host RAM charged as a sleep begins, and
``max_sleeping_models``), waking it (checked by the canary token recorded before its first
sleep), loading it afresh on the same devices when a wake fails, and demoting a model to make
room (it sleeps if the budgets allow, else it stops).

The wake *command* (fenced, room chosen under the placement lock) is the
:class:`~neuron.registry.authority.Registry`'s; the wake itself runs here, in its own task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from neuron.discovery import DeviceSample
from neuron.engine import EngineProcess
from neuron.engine import sleep as engine_sleep
from neuron.errors import EngineFailed, LoadCancelled, ModelBusy, ModelNotFound, NoSleep, StaleEpoch
from neuron.metrics import NeuronMetrics
from neuron.registry.slot import Slot, State, require_idle
from neuron.registry.table import Table
from neuron.registry.unload import Unloads
from neuron.settings import ModelSpec, SleepSettings

log = logging.getLogger("neuron.registry")

Sampler = Callable[[], Awaitable[list[DeviceSample]]]


class Ladder:
    def __init__(
        self,
        table: Table,
        unloads: Unloads,
        client: httpx.AsyncClient,
        metrics: NeuronMetrics,
        sample: Sampler,
        settings: SleepSettings,
        engine: Callable[[ModelSpec, list[int] | None, Slot | None], EngineProcess],
    ) -> None:
        self._table = table
        self._unloads = unloads
        self._client = client
        self._metrics = metrics
        self._sample = sample
        self.settings = settings
        self._engine = engine
        """A fresh engine for a model on the given devices (a reload after a failed wake)."""

    def _host_ram(self, slot: Slot) -> int:
        """What ``slot``'s weights take in host RAM once it has slept (MiB, an estimate)."""
        return slot.spec.vram_mb or slot.reserved_mb or self.settings.host_ram_per_model_mb

    def _sleep_refusal(
        self, slot: Slot, stopping: Sequence[Slot] = (), coming: str | None = None
    ) -> NoSleep | None:
        """Why ``slot`` may not go to sleep now for lack of budget (``None``: it may), once
        the sleepers in ``stopping`` are stopped. ``coming``: a sleeper being woken, whose
        room this sleep makes: it leaves the count of sleepers as ``slot`` joins it (its host
        RAM stays counted: vLLM keeps it pinned after a wake)."""
        conf = self.settings
        if not conf.enabled:
            return NoSleep("sleep mode is off on this neuron ([sleep] enabled = false)")
        limit = conf.max_sleeping_models
        asleep = sum(1 for s in self._table.sleepers() if s.model_id != coming)
        if limit is not None and asleep - len(stopping) >= limit:
            return NoSleep(f"this neuron keeps at most {limit} sleeping model(s)")
        if not slot.host_ram_mb:  # not charged yet (charged engines keep theirs)
            freed = sum(s.host_ram_mb for s in stopping)
            used, need = self._table.host_ram_used_mb() - freed, self._host_ram(slot)
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
        if not self.settings.enabled:
            return None
        order = sorted(
            (
                s
                for s in self._table.sleepers()
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
        return level >= 2 or self.settings.canary

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
        slot = self._table.get(model_id)
        if slot is None:
            raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
        if slot.state is State.SLEEPING:  # join its sleep; its outcome is this one's
            return await self._slept(slot, slot.op)
        self._table.fence.check(epoch)
        if slot.state is not State.READY:
            raise StaleEpoch(f"cannot put {model_id!r} to sleep: it is {slot.state}")
        if slot.in_flight:
            raise ModelBusy(
                f"model {model_id!r} has {slot.in_flight} request(s) in flight", param="model_id"
            )
        require_idle(slot, idle_at_least, "sleep")
        refusal = self._sleep_refusal(slot)
        if refusal is not None:
            raise refusal
        return await self._slept(slot, self._begin_sleep(slot, level or self.settings.level))

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
        self._table.publish()
        return slot.op

    async def _sleep(
        self, slot: Slot, level: int, before_it: Sequence[asyncio.Task[Any]] = ()
    ) -> str | None:
        """Put ``slot``'s engine to sleep; returns why it failed (``None``: it slept, or an
        unload cut it short), for :meth:`_slept` to give every caller."""
        conf, engine = self.settings, slot.engine
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
            if not self._table.holds(slot) or slot.engine is not engine:
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
            await self._unloads.stop_later(slot, State.SLEEPING)
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
        self._table.publish()
        return None

    def demote(self, victim: Slot, model_id: str) -> asyncio.Task[Any]:
        """Make room: ``victim`` (ready and idle, or asleep) sleeps if the budgets allow,
        else stops; the returned task ends when its memory is given back."""
        spare = self._spare_sleepers(victim, model_id) if victim.state is State.READY else None
        if spare is not None:
            log.info("putting %s to sleep for %s", victim.model_id, model_id)
            stops = []
            for sleeper in spare:  # the least recently used sleepers give it their room
                log.info("stopping %s (asleep) for %s to sleep", sleeper.model_id, victim.model_id)
                sleeper.state = State.UNLOADING
                stops.append(self._unloads.stop_later(sleeper, State.SLEEPING))
            return self._begin_sleep(victim, self.settings.level, stops)
        log.info("evicting %s for %s", victim.model_id, model_id)
        was, victim.state = victim.state, State.UNLOADING
        # Its own task: a cancelled load must not leave an engine half stopped.
        return self._unloads.stop_later(victim, was)

    async def wake(self, slot: Slot, before: list[asyncio.Task[Any]]) -> None:
        conf, engine = self.settings, slot.engine
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
        self._table.publish()

    def _waking(self, slot: Slot) -> bool:
        """Whether ``slot`` is still the registered one and still waking: an unload that came
        during the wake must not be overwritten by ``ready``."""
        return self._table.holds(slot) and slot.state is State.WAKING

    async def _reload(self, slot: Slot) -> None:
        """Stop ``slot``'s engine and start a fresh one on the same devices (a cold load)."""
        began = time.monotonic()
        old = slot.engine
        await old.stop()
        self._metrics.engine_exits.labels(slot.model_id, "stopped").inc()
        if not self._waking(slot):
            return  # unloaded meanwhile: start nothing
        try:
            slot.engine = self._engine(slot.spec, old.devices, slot)  # EngineFailed: no port
            slot.slept, slot.host_ram_mb, slot.canary, slot.sleep_level = False, 0, None, None
            slot.woken_at = slot.wake_s = None  # a cold start, not a wake
            self._table.publish()
            await slot.engine.start()
        except Exception as exc:
            message = exc.message if isinstance(exc, EngineFailed) else repr(exc)
            slot.state, slot.error = State.FAILED, f"reload after a failed wake: {message}"
            self._metrics.load_failures.labels(slot.model_id).inc()
            self._table.publish()
            return
        if not self._waking(slot):
            return  # unloaded meanwhile: the unload stops the new engine
        slot.state = State.READY
        slot.ready_at = time.monotonic()
        slot.load_s = round(time.monotonic() - began, 3)
        self._metrics.load_seconds.labels(slot.model_id).observe(slot.load_s)
        self._table.publish()


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
