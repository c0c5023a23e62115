"""Polls every neuron's ``/models`` and ``/health`` (and ``/discovery`` when it comes up).

A neuron is marked down after ``down_after`` consecutive failed polls and up again on the
first success; a neuron that is down when cortex starts is simply down. Each poll of a
node is bounded by ``poll.timeout``; nodes are polled concurrently.

A neuron that names its states (``instance`` and ``epoch``, issue 24) is also watched: one
long poll per neuron on ``/models/watch`` (``[poll] watch``), answered as soon as a model's
state changes there, so a load started by another replica shows here within milliseconds.
The poll goes on beside it, as the fallback and for health. Of the answers, whichever
names the newest epoch wins: an answer that arrives late never undoes a newer one.

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
WATCH_MIN_GAP = 0.01
"""Shortest time between the starts of two watches of one neuron (seconds)."""
NO_STREAM_RETRY = 60.0
"""Seconds before a neuron without ``/models/watch`` (older than issue 24) is asked again."""


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
        self._refresh: asyncio.Task[None] | None = None
        self._no_stream: set[str] = set()
        """Neurons whose ``/models/watch`` was 404 (said once in the log, not every minute)."""

    async def run(self) -> None:
        watches = (
            [asyncio.create_task(self._watch(n), name=f"watch {n.name}") for n in self.fleet.nodes]
            if self._settings.watch
            else []
        )
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(self._settings.interval)
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll_guarded(node) for node in self.fleet.nodes))
        self.polled.set()

    async def refresh(self) -> None:
        """Poll every neuron that is up now (one round shared by concurrent callers).

        A cold load plans from this: the neurons' latest word on last use, which replicas
        must agree on to choose the same victim.
        """
        if self._refresh is None or self._refresh.done():
            nodes = self.fleet.up()
            self._refresh = asyncio.create_task(self._poll_nodes(nodes), name="refresh")
        await asyncio.shield(self._refresh)

    async def _poll_nodes(self, nodes: list[Node]) -> None:
        await asyncio.gather(*(self._poll_guarded(node) for node in nodes))

    def apply(
        self,
        node: Node,
        models: dict[str, dict[str, Any]],
        *,
        instance: str | None,
        epoch: int | None,
        asked: float,
        ours_before: dict[str, int] | None = None,
        status: str | None = None,
    ) -> bool:
        """Keep ``models`` as ``node``'s (read at ``asked``), unless what is kept is newer.

        Returns whether they were kept. ``status``: the neuron's, when the answer gave it.
        """
        before = _routed(node)
        kept = self._observe(node, models, instance, epoch, asked, ours_before or {})
        if kept and status is not None and node.health is not None:
            node.health = {**node.health, "status": status}
        self._changed(node, before)
        if kept:
            self._metrics.observe_node(node)
        return kept

    def _observe(
        self,
        node: Node,
        models: dict[str, dict[str, Any]],
        instance: str | None,
        epoch: int | None,
        asked: float,
        ours_before: dict[str, int],
    ) -> bool:
        if epoch is None and node.changed >= asked:
            return False  # an older neuron's answer that predates a load or unload by us
        if not node.newer(instance, epoch):
            return False
        node.instance, node.epoch = instance, epoch
        node.models = models
        now = node.seen = time.monotonic()
        node.used = {
            model_id: now - idle
            for model_id, info in models.items()
            if (idle := info.get("idle_s")) is not None
        }
        # The neuron counted our requests too. Ours may have started or ended while the
        # answer travelled: subtracting the larger count errs towards "nobody else".
        node.others = {
            model_id: others
            for model_id, info in models.items()
            if (
                others := info["in_flight"] - max(ours_before.get(model_id, 0), node.busy(model_id))
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
        return True

    async def _watch(self, node: Node) -> None:
        """Long-poll ``node``'s ``/models/watch`` until cancelled; never raises."""
        wait = self._settings.watch_timeout
        timeout = aiohttp.ClientTimeout(total=wait + self._settings.timeout)
        while True:
            try:
                pause = await self._watch_once(node, wait, timeout)
            except Exception:  # a fault of cortex's own: logged; polling still covers it
                log.exception("watching neuron %s failed in cortex", node.name)
                pause = self._settings.interval
            if pause:
                await asyncio.sleep(pause)

    async def _watch_once(self, node: Node, wait: float, limit: aiohttp.ClientTimeout) -> float:
        """One long poll; returns how long to pause before the next."""
        asked = time.monotonic()
        ours_before = dict(node.model_in_flight)
        sent = (node.instance, node.epoch)
        query = {"timeout": f"{wait:g}"}
        if sent[0] is not None and sent[1] is not None:
            query |= {"instance": sent[0], "epoch": str(sent[1])}
        try:
            async with self._session.get(
                node.base + "/models/watch", params=query, headers=node.headers(), timeout=limit
            ) as response:
                if response.status == 404:
                    if node.name not in self._no_stream:
                        self._no_stream.add(node.name)
                        log.info("neuron %s has no change stream: polling only", node.name)
                    return NO_STREAM_RETRY
                response.raise_for_status()
                # Over max_answer_bytes: TooLarge, a ClientError (the poll reports it too).
                state = contract.state(
                    await read_at_most(response, self._settings.max_answer_bytes)
                )
        except (aiohttp.ClientError, TimeoutError, ValueError):  # the poll reports these
            return self._settings.interval
        self._no_stream.discard(node.name)
        self.apply(
            node,
            contract.by_id(state.models),
            instance=state.instance,
            epoch=state.epoch,
            asked=asked,
            ours_before=ours_before,
            status=state.status,
        )
        unchanged = (state.instance, state.epoch) == sent
        took = time.monotonic() - asked
        # A neuron that answers at once with nothing new would make this a busy loop; one
        # whose epoch never stops moving gets at most one watch per WATCH_MIN_GAP.
        if unchanged and took < min(wait / 2, 1.0):
            return self._settings.interval
        return max(0.0, WATCH_MIN_GAP - took)

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
                (models, named), health = await asyncio.gather(
                    self._get_models(node),
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
        self._observe(node, models, named[0], named[1], asked, ours_before)
        self._changed(node, before)
        self._metrics.observe_node(node)

    def _changed(self, node: Node, before: tuple[bool, str, dict[str, Any], str | None]) -> None:
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

    async def _get_models(
        self, node: Node
    ) -> tuple[dict[str, dict[str, Any]], tuple[str | None, int | None]]:
        """``/models``, and the state it names (its ``X-Neuron-Instance`` and ``-Epoch``)."""
        async with self._session.get(node.base + "/models", headers=node.headers()) as response:
            response.raise_for_status()
            try:
                body = await read_at_most(response, self._settings.max_answer_bytes)
            except TooLarge as exc:
                raise contract.BreachError(f"/models: {exc}") from None
            return contract.models(body), contract.named(response.headers)

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


def _routed(node: Node) -> tuple[bool, str, dict[str, Any], str | None]:
    """What routing reads of ``node`` (see ``Fleet.changed``; a new ``instance`` is a
    restart, whose engines' caches are empty: the prefix index must hear of it)."""
    return (
        node.up,
        node.status,
        {m: info.get("status") for m, info in node.models.items()},
        node.instance,
    )
