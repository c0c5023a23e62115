"""Polls every neuron's ``/models`` and ``/health`` (and ``/discovery`` when it comes up).

A neuron is marked down after ``down_after`` consecutive failed polls and up again on the
first success; a neuron that is down when cortex starts is simply down. Each poll of a
node is bounded by ``poll.timeout``; nodes are polled concurrently.

Answers are parsed against :mod:`cortex.fleet.contract` before anything of them is kept.
An answer that breaks it is a failed poll like any other: the reason is logged (once per
change of reason) and shown as the neuron's ``error`` in ``/fleet``, and polling goes on.
Nothing one neuron sends, and no fault of cortex's own with one neuron, stops the others'
polls or the poller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from cortex.fleet import contract
from cortex.fleet.state import Fleet, Load, Node
from cortex.metrics import CortexMetrics
from cortex.settings import Poll
from cortex.upstream.client import TooLarge, read_at_most

log = logging.getLogger("cortex.poller")
T = TypeVar("T")


class Poller:
    def __init__(
        self, fleet: Fleet, session: aiohttp.ClientSession, settings: Poll, metrics: CortexMetrics
    ) -> None:
        self.fleet = fleet
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self.polled = asyncio.Event()
        """Set after the first round, so start-up can wait for a first view of the fleet."""

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._settings.interval)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll_guarded(node) for node in self.fleet.nodes))
        self.polled.set()

    async def _poll_guarded(self, node: Node) -> None:
        """One node's poll; a fault of cortex's own there is that node's failed poll only."""
        try:
            await self._poll(node)
        except Exception as exc:
            log.exception("polling neuron %s failed in cortex", node.name)
            before = _routed(node)
            self._failed(node, exc)
            self._changed(node, before)

    async def _poll(self, node: Node) -> None:
        asked = time.monotonic()
        ours_before = dict(node.model_in_flight)
        try:
            async with asyncio.timeout(self._settings.timeout):
                models, health = await asyncio.gather(
                    self._get(node, "/models", contract.models),
                    self._get(node, "/health", contract.health),
                )
                if not node.up or node.discovery is None:
                    node.discovery = await self._get(node, "/discovery", contract.discovery)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # BreachError too
            before = _routed(node)
            self._failed(node, exc)
            self._changed(node, before)
            return
        # Taken after the last await: a load or unload while the poll travelled has called
        # Fleet.changed() itself, and is part of this picture.
        before = _routed(node)
        if not node.up:
            log.info("neuron %s is up (%s)", node.name, node.base)
        node.up, node.failures, node.last_error = True, 0, None
        node.health = health
        if node.changed < asked:  # else the answer predates a load or unload by this cortex
            node.models = models
            # The neuron counted our requests too. Ours may have started or ended while the
            # answer travelled: subtracting the larger count errs towards "nobody else".
            node.others = {
                model_id: others
                for model_id, info in models.items()
                if (
                    others := info["in_flight"]
                    - max(ours_before.get(model_id, 0), node.busy(model_id))
                )
                > 0
            }
            node.loads = {
                model_id: load
                for model_id, info in node.models.items()
                if (load := Load.of(info)).queued is not None
            }
            # Ours that started or ended while the poll travelled may or may not be in the
            # engine's numbers: subtracting the smaller count errs towards busy.
            node.queued_others = {
                model_id: max(0, queued - min(ours_before.get(model_id, 0), node.busy(model_id)))
                for model_id, load in node.loads.items()
                if (queued := load.queued) is not None
            }
        self._changed(node, before)
        self._metrics.observe_node(node)

    def _changed(self, node: Node, before: tuple[bool, str, dict[str, Any]]) -> None:
        if _routed(node) != before:  # a poll that changes nothing keeps routing's views
            self.fleet.changed()

    async def _get(self, node: Node, path: str, parse: Callable[[bytes], T]) -> T:
        """``path``'s answer, parsed; at most ``max_answer_bytes`` of it is read (over it,
        :class:`contract.BreachError`, and the connection is closed, not reused)."""
        async with self._session.get(node.base + path, headers=node.headers()) as response:
            response.raise_for_status()
            try:
                body = await read_at_most(response, self._settings.max_answer_bytes)
            except TooLarge as exc:
                raise contract.BreachError(f"{path}: {exc}") from None
            return parse(body)

    def _failed(self, node: Node, exc: BaseException) -> None:
        node.failures += 1
        reason = _reason(exc)
        if isinstance(exc, contract.BreachError) and reason != node.last_error:
            log.warning("neuron %s: %s", node.name, reason)  # its operator can fix this
        node.last_error = reason
        if node.up and node.failures >= self._settings.down_after:
            log.warning(
                "neuron %s is down after %d failed polls: %s",
                node.name,
                node.failures,
                node.last_error,
            )
            node.up = False
            node.discovery = None  # re-read when it comes back: it may be a new machine
        elif node.up:
            log.info("poll of neuron %s failed (%d): %s", node.name, node.failures, node.last_error)
        self._metrics.observe_node(node)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, contract.BreachError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}"


def _routed(node: Node) -> tuple[bool, str, dict[str, Any]]:
    """What routing reads of ``node`` (see ``Fleet.changed``)."""
    return node.up, node.status, {m: info.get("status") for m, info in node.models.items()}
