"""Activation (load the default models) and deactivation (drain, then unload everything).

Status moves ``activating → ready → draining``. While draining, :mod:`neuron.gate` answers
new requests with 503 ``shutting_down``. Once the requests already in flight have finished
(or ``drain_timeout`` has passed), every model is unloaded, loads still in progress are
cancelled (their callers get 409 ``load_cancelled`` while the listener is still up), and
then :attr:`Lifecycle.drained` is set: the caller closes the listener and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from neuron.errors import NeuronError
from neuron.registry import Registry
from neuron.settings import ModelSpec

log = logging.getLogger("neuron.lifecycle")


class Lifecycle:
    def __init__(self, drain_timeout: float, registry: Registry) -> None:
        self.registry = registry
        self.status = "activating"
        self.started = time.monotonic()
        self.in_flight = 0
        self.pending: dict[str, ModelSpec] = {}
        """Default models not yet handed to the registry (shown as ``loading``)."""
        self.drained = asyncio.Event()
        self._drain_timeout = drain_timeout
        self._idle = asyncio.Event()
        self._idle.set()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self.status == "draining"

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def activate(self, specs: list[ModelSpec]) -> None:
        """Load ``specs`` one after another; a failure is a warning and the next is tried."""
        self.pending = {s.model_id: s for s in specs}
        for spec in specs:
            if self.draining:
                break
            began = time.monotonic()
            try:
                await self.registry.load(spec)
            except NeuronError as exc:
                log.warning("default model %s failed to load: %s", spec.model_id, exc.message)
            except Exception:
                log.warning("default model %s failed to load", spec.model_id, exc_info=True)
            else:
                log.info("default model %s ready in %.1fs", spec.model_id, time.monotonic() - began)
            finally:
                self.pending.pop(spec.model_id, None)
                self.registry.changed()
        if self.status == "activating":
            self.status = "ready"
            self.registry.changed()
            log.info("neuron ready after %.1fs", time.monotonic() - self.started)
            notify_systemd("READY=1")

    def begin_drain(self) -> None:
        """Idempotent: the first call starts the drain, later calls do nothing."""
        if self._drainer is not None:
            return
        self.status = "draining"
        self.pending.clear()
        self.registry.changed()  # watchers learn of the drain at once
        log.info("draining: %d request(s) in flight", self.in_flight)
        notify_systemd("STOPPING=1")
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self._drain_timeout)
        except TimeoutError:
            log.warning(
                "drain timeout (%gs): %d request(s) still in flight are cut off",
                self._drain_timeout,
                self.in_flight,
            )
        try:
            began = time.monotonic()
            count = len(self.registry)
            await self.registry.unload_all()
            if count:
                log.info("unloaded %d model(s) in %.1fs", count, time.monotonic() - began)
        finally:
            self.drained.set()

    async def deactivate(self) -> None:
        """Drain (if no signal started it already) and unload everything; returns when done."""
        self.begin_drain()
        await self.drained.wait()


def notify_systemd(message: str) -> None:
    """``sd_notify``: a no-op unless systemd gave us ``NOTIFY_SOCKET``."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", path, exc)
