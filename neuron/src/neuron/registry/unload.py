"""Unloading: the unload command, and stopping a model's engine in a task of its own (after
its requests, at most some patience), then forgetting it. Concurrent unloads of one model
share one stop; a stop outlives whoever asked for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from neuron.errors import ModelBusy, ModelNotFound
from neuron.metrics import NeuronMetrics
from neuron.registry.slot import ASLEEP, Busy, Slot, State, require_idle
from neuron.registry.table import Table

log = logging.getLogger("neuron.registry")


class Unloads:
    def __init__(self, table: Table, metrics: NeuronMetrics) -> None:
        self._table = table
        self._metrics = metrics
        self._stopping: set[asyncio.Task[None]] = set()

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
        slot = self._table.get(model_id)
        if slot is None:
            raise ModelNotFound(f"model {model_id!r} is not on this neuron", param="model_id")
        if slot.state is State.UNLOADING:
            await slot.gone.wait()  # the idempotent answer: whatever epoch it was decided at
            return
        self._table.fence.check(epoch)
        require_idle(slot, idle_at_least, "unload")
        if slot.in_flight and busy is Busy.REFUSE:
            raise ModelBusy(
                f"model {model_id!r} has {slot.in_flight} request(s) in flight; unload it "
                "with force to stop it once they are done",
                param="model_id",
            )
        was = slot.state
        slot.state = State.UNLOADING
        self._table.publish()
        patience = patience if busy is Busy.WAIT else 0.0
        # Its own task: a caller that goes away must not leave the model half unloaded.
        await asyncio.shield(self.stop_later(slot, was, patience))

    def stop_later(self, slot: Slot, was: State, patience: float = 0.0) -> asyncio.Task[None]:
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
            self._table.forget(slot)
            slot.gone.set()
            if was is not State.FAILED:
                self._metrics.engine_exits.labels(model_id, "stopped").inc()
            self._table.publish()
        log.info("unloaded %s", model_id)


def _forget(tasks: set[asyncio.Task[None]], model_id: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("stopping %s failed: %r", model_id, exc)

    return done
