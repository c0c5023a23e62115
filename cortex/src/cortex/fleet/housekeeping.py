"""Housekeeping, every ``check_interval``: idle models put to sleep after their ``idle_ttl``
(unloaded where they cannot sleep), sleepers unloaded after ``sleep_ttl`` asleep (catalogued
models only, never pinned ones), and pinned models missing from an up neuron loaded again (a
failed pin load retried after ``pin_retry``; a pin unloaded by hand left alone until loaded
by hand again). Each idle command names the neuron boot it was judged on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from cortex.errors import CortexError, upstream_message
from cortex.fleet.commands import FENCED, Commands, Fenced, error_code, json_object
from cortex.fleet.state import Fleet, Node
from cortex.metrics import CortexMetrics
from cortex.settings import CatalogueModel, CortexSettings

log = logging.getLogger("cortex.loader")


class Housekeeper:
    def __init__(
        self,
        fleet: Fleet,
        settings: CortexSettings,
        metrics: CortexMetrics,
        commands: Commands,
        ensure: Callable[[str, str], Awaitable[object]],
        loading: Callable[[str, str], bool],
    ) -> None:
        self.fleet = fleet
        self._cfg = settings.loading
        self._metrics = metrics
        self._commands = commands
        self._ensure = ensure
        """Makes a model ready on a neuron (the loader's single-flight load)."""
        self._loading = loading
        """Whether this cortex is loading a model on a neuron now."""
        self._pin_tries: dict[tuple[str, str], float] = {}
        self._unpinned: set[tuple[str, str]] = set()
        """Pins unloaded by hand: left alone until loaded by hand again (or a restart)."""
        self._background: set[asyncio.Task[Any]] = set()
        self._asleep_since: dict[tuple[str, str], float] = {}
        """(node, model) → when this cortex first saw it sleeping (monotonic)."""

    def loaded_by_hand(self, model: str, node: str | None) -> None:
        """``cortex load``: a pin of ``model`` on ``node`` (every pin of it, without a node)
        that was unloaded by hand is kept again."""
        if node is not None:
            self._unpinned.discard((model, node))
        else:
            self._unpinned = {k for k in self._unpinned if k[0] != model}

    def unloaded_by_hand(self, model: str, node: str) -> None:
        """``cortex unload`` of a pinned ``model`` on ``node``: not loaded back."""
        self._unpinned.add((model, node))

    async def run(self) -> None:
        """Idle unload and pins, every ``check_interval``, until cancelled."""
        try:
            while True:
                try:
                    await self.housekeeping()
                except Exception:  # one bad round must not end housekeeping
                    log.exception("housekeeping failed")
                await asyncio.sleep(self._cfg.check_interval)
        finally:
            for task in self._background:
                task.cancel()

    async def housekeeping(self) -> None:
        now = time.monotonic()
        jobs: list[Coroutine[Any, Any, Any]] = []
        asleep = {
            (node.name, model_id)
            for node in self.fleet.up()
            for model_id, info in node.models.items()
            if info.get("status") == "sleeping"
        }
        self._asleep_since = {k: v for k, v in self._asleep_since.items() if k in asleep}
        for node in self.fleet.up():
            for model_id in set(node.last_used) - node.models.keys():
                del node.last_used[model_id]  # gone: a later copy starts a fresh clock
            if node.status == "draining":
                continue
            for model_id, info in node.models.items():
                if info.get("status") == "sleeping":
                    since = self._asleep_since.setdefault((node.name, model_id), now)
                    sleep_ttl = self._sleep_ttl(model_id, node)
                    if sleep_ttl and now - since >= sleep_ttl and model_id not in node.evicting:
                        node.evicting.add(model_id)
                        self.fleet.changed()
                        jobs.append(
                            self._idle_unload(
                                node, model_id, now - since, 0.0, node.instance, "sleep_ttl"
                            )
                        )
                    continue
                if info.get("status") != "ready":
                    continue
                last = node.last_used.setdefault(model_id, now)  # first seen ready
                # Another replica's use counts too: the neuron's account, when it gives one.
                last = max(last, node.used.get(model_id, last))
                ttl = self._idle_ttl(model_id, node)
                idle = not node.in_use(model_id) and model_id not in node.evicting
                if ttl and idle and now - last >= ttl:
                    node.evicting.add(model_id)  # out of routing before anything awaits
                    self.fleet.changed()
                    jobs.append(self._idle_sleep(node, model_id, now - last, ttl, node.instance))
        for entry in self.fleet.catalogue.models:
            for name in entry.pinned_on:
                self._check_pin(entry, name, now)
        if jobs:
            await asyncio.gather(*jobs)

    def _idle_ttl(self, model_id: str, node: Node) -> float:
        entry = self.fleet.entry(model_id)
        if entry is None or node.name in entry.pinned_on:
            return 0.0  # cortex could not load it back, or it must stay
        return entry.idle_ttl if entry.idle_ttl is not None else self._cfg.idle_ttl

    def _sleep_ttl(self, model_id: str, node: Node) -> float:
        entry = self.fleet.entry(model_id)
        if entry is None or node.name in entry.pinned_on:
            return 0.0
        return self._cfg.sleep_ttl

    async def _idle_sleep(
        self, node: Node, model: str, idle: float, ttl: float, boot: str | None
    ) -> None:
        """``idle_ttl`` passed: the model goes to sleep; where it cannot, it is unloaded.

        ``boot``: the neuron's ``instance`` when the model was judged idle, sent with each
        command, so that a neuron restarted since (its new boot applied by a poll meanwhile)
        refuses them rather than taking the old boot's judgement for its own."""
        log.info("%s idle on %s for %.0fs: putting it to sleep", model, node.name, idle)
        # As for an idle unload: fenced by the model's own idleness at the neuron (with a
        # tenth of slack), not by the neuron's epoch.
        body: dict[str, Any] = {"model_id": model, "idle_at_least": ttl * 0.9}
        if boot is not None:  # judged idle on this boot: another boot refuses it
            body["instance"] = boot
        asked = time.monotonic()
        try:
            status, raw = await self._commands.post(node, "/models/sleep", body)
        except (aiohttp.ClientError, TimeoutError) as exc:  # TooLarge included: a failed sleep
            node.evicting.discard(model)
            self.fleet.changed()
            log.warning("idle sleep of %s on %s failed: %s", model, node.name, exc)
            return
        node.evicting.discard(model)
        self.fleet.changed()
        answer = json_object(raw)
        self._commands.apply(node, answer, asked)
        code = error_code(answer)
        if status == 200:
            self._metrics.sleeps.labels(model, node.name, "idle").inc()
            self._metrics.observe_node(node)
            return
        if status == 409 and code in FENCED:
            log.info("%s stays awake on %s: %s", model, node.name, upstream_message(raw))
            return
        if status == 404 and code == "model_not_found":
            return
        # Cannot sleep here (sleep off, host RAM budget full, a neuron without sleep): unload.
        node.evicting.add(model)
        self.fleet.changed()
        await self._idle_unload(node, model, idle, ttl, boot)

    async def _idle_unload(
        self,
        node: Node,
        model: str,
        idle: float,
        ttl: float,
        boot: str | None,
        reason: str = "idle",
    ) -> None:
        """Unload ``model``, idle (or asleep) past its ttl, as judged on the neuron's ``boot``."""
        log.info("%s idle on %s for %.0fs: unloading it", model, node.name, idle)
        try:
            # The neuron checks that nobody (no other replica either) used it meanwhile (a
            # tenth of slack: this cortex's view of the last use is as old as its last read).
            # No epoch: other models' changes there do not bear on this one's idleness.
            await self._commands.unload(node, model, reason, instance=boot, idle=ttl * 0.9)
        except Fenced as exc:
            log.info("%s stays on %s: %s", model, node.name, exc)
        except CortexError as exc:
            log.warning("idle unload failed: %s", exc.message)

    def _check_pin(self, entry: CatalogueModel, name: str, now: float) -> None:
        try:
            node = self.fleet.node(name)
        except KeyError:
            return
        key = (entry.id, name)
        if not node.up or node.status == "draining" or key in self._unpinned:
            return
        if node.status_of(entry.id) in ("ready", "loading") or self._loading(entry.id, name):
            return
        if now - self._pin_tries.get(key, -self._cfg.pin_retry) < self._cfg.pin_retry:
            return
        self._pin_tries[key] = now
        log.info("%s is pinned on %s and missing there: loading it", entry.id, name)
        task = asyncio.create_task(self._pin(entry.id, name), name=f"pin {entry.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _pin(self, model: str, node: str) -> None:
        try:
            await self._ensure(model, node)
        except CortexError as exc:
            log.warning(
                "pinned %s could not be loaded on %s (retry in %gs): %s",
                model,
                node,
                self._cfg.pin_retry,
                exc.message,
            )
        except Exception:  # a fault of cortex's own: logged, and housekeeping tries again
            log.exception(
                "loading pinned %s on %s crashed (retry in %gs)", model, node, self._cfg.pin_retry
            )
