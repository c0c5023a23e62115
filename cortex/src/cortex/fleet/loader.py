"""Models on demand: cold loads, evictions, pins and idle unload across the fleet.

- :meth:`Loader.ensure` makes a catalogued model ready somewhere. Concurrent callers share
  one load (single-flight per model, across every neuron). The neuron is chosen by
  :func:`cortex.fleet.placement.plan` over a snapshot of what the poller last saw plus
  what this cortex is doing right now (loads in progress, models being evicted, requests
  in flight), so two loads planned back to back never count the same room twice.
- Several replicas, one fleet: the neuron is the authority. A cold load first re-reads
  the neurons that are up (:meth:`Poller.refresh`), and plans only from what every replica
  reads alike in their answers (:meth:`Loader.candidate`, :meth:`Loader.eta`); then one
  ``/models/load`` carries the evictions (``evict``), the neuron ``epoch`` the plan was made
  from and the neuron's boot ``instance`` that epoch belongs to (an epoch of an earlier boot
  means nothing now). The neuron makes room and starts the engine in one step, or answers
  409 ``stale_epoch`` / ``model_busy`` with its current state, from which this cortex plans
  again (at most ``MAX_REPLANS`` times). A load of a model that is already loading there
  joins it. Older neurons (no epoch) get the unload-then-load of
  before. A model being evicted is taken out of routing at once (``Node.evicting``).
- The residency ladder: a model asleep on a neuron is woken there (a load of a sleeping
  model is a wake, with the same ``epoch`` and ``evict``) unless a cold load elsewhere is
  expected sooner (:func:`cortex.fleet.eta.reported`: the neurons' own load and wake
  times). The neuron puts an evicted model to sleep, or stops it when its host RAM budget is full.
- :meth:`Loader.run` checks every ``check_interval`` for idle models (put to sleep after
  their ``idle_ttl``, unloaded where they cannot sleep; unloaded after ``sleep_ttl`` asleep;
  catalogued models only, never pinned ones) and for pinned models missing from an up
  neuron (loaded again; a failed pin load is retried after ``pin_retry``).
- Loads and unloads by hand (``cortex load|unload``) go through the same paths.

The loader owns the single-flight loads and the by-hand commands; its parts are the
:class:`~cortex.fleet.planner.Planner` (what a plan is made from), the
:class:`~cortex.fleet.commands.Commands` (what is sent to a neuron, and its answers) and the
:class:`~cortex.fleet.housekeeping.Housekeeper` (idle sleep and unload, pins).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from cortex.errors import (
    CortexError,
    ModelNotFound,
    NoCapacity,
    StillLoading,
)
from cortex.fleet.commands import Commands, Fenced, Refused
from cortex.fleet.eta import Estimates, retry_after
from cortex.fleet.housekeeping import Housekeeper
from cortex.fleet.placement import Candidate, Eta
from cortex.fleet.planner import Planner, want_of
from cortex.fleet.poller import Poller
from cortex.fleet.state import Fleet, Node
from cortex.metrics import CortexMetrics
from cortex.settings import CortexSettings

log = logging.getLogger("cortex.loader")

MAX_REPLANS = 20
"""Plans one cold load may make again after neurons answered that their state moved on."""


class Loader:
    def __init__(
        self,
        fleet: Fleet,
        session: aiohttp.ClientSession,
        settings: CortexSettings,
        metrics: CortexMetrics,
        poller: Poller,
    ) -> None:
        self.fleet = fleet
        self._poller = poller
        self._cfg = settings.loading
        self._retry_after = settings.gateway.retry_after
        self._metrics = metrics
        self._loads: dict[tuple[str, str | None], asyncio.Task[Node]] = {}
        self._planning = asyncio.Lock()
        self.estimates = Estimates(self._cfg.cold_estimate, self._cfg.wake_estimate)
        self._planner = Planner(fleet, settings)
        self._commands = Commands(fleet, session, settings, metrics, poller)
        self.housekeeper = Housekeeper(
            fleet,
            settings,
            metrics,
            self._commands,
            # Looked up at each pin load, as when housekeeping was the loader's own method.
            lambda model, node: self.ensure(model, node),
            self._loading,
        )

    # --- on demand -------------------------------------------------------------------

    def can_load(self, model: str) -> bool:
        return self._cfg.on_demand and self.fleet.entry(model) is not None

    async def wait(self, model: str) -> Node:
        """Wait (bounded by ``cold_start_timeout``) until ``model`` is ready somewhere."""
        gauge = self._metrics.waiting_for_load.labels(model)
        gauge.inc()
        try:
            async with asyncio.timeout(self._cfg.cold_start_timeout):
                return await self.ensure(model)
        except TimeoutError:
            raise StillLoading(
                f"model {model!r} is still loading after {self._cfg.cold_start_timeout:g}s; "
                "retry shortly",
                retry_after=self.retry_after(model),
            ) from None
        finally:
            gauge.dec()

    def retry_after(self, model: str) -> int:
        """``Retry-After`` for a 503 about ``model`` not being ready (:func:`eta.retry_after`):
        from the estimate of its load or wake in progress, this cortex's own, else one a neuron
        reports coming, less the time it has been at it (:meth:`Node.state_age`, the same age
        :meth:`candidate` reads); the estimate is this cortex's timing, else the neurons'
        (:meth:`eta`). ``gateway.retry_after`` when nothing is coming."""
        own = self.estimates.retry_after(model)
        if own is not None:
            return own
        reported = self.eta(model)
        seen = []
        for node in self.fleet.up():
            kind = {"loading": "cold", "waking": "wake"}.get(node.status_of(model) or "")
            if kind is None:
                continue
            estimate = self.estimates.eta(model, node.name, kind, reported)
            spent = max(0.0, node.state_age(model) or 0.0)
            seen.append(retry_after(estimate - spent, estimate))
        return min(seen, default=self._retry_after)

    async def ensure(self, model: str, node: str | None = None) -> Node:
        """Load ``model`` (on ``node``, or wherever it fits) unless it is ready; one load at a time.

        Raises :class:`CortexError`: 404 unknown or unplaceable, 503 no room, 502 failed.
        """
        key = (model, node)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load(model, node), name=f"load {model}")
            self._loads[key] = task
            task.add_done_callback(lambda t: self._settled(key, t))
        return await asyncio.shield(task)

    def _settled(self, key: tuple[str, str | None], task: asyncio.Task[Node]) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up

    async def _load(self, model: str, only: str | None) -> Node:
        entry = self.fleet.entry(model)
        if entry is None:
            raise ModelNotFound(f"model {model!r} is not in the catalogue", param="model")
        want = want_of(entry)
        began = time.monotonic()
        refused: dict[str, str] = {}
        replans = 0
        if not self._ready(model, only):
            await self._poller.refresh()  # plan from the neurons' word as of now
        while True:
            async with self._planning:
                if (ready := self._ready(model, only)) is not None:
                    return ready
                target = self._planner.plan(want, only, refused)
                node = self.fleet.node(target.node)
                epoch = node.epoch  # what the plan was made from (None: an older neuron)
                boot = node.instance
                self._planner.pending.setdefault(node.name, set()).add(model)
                # (A victim already going, say to an idle sleep, stays out of routing when
                # this load is done with it: only what this load took out is put back.)
                taken = set(target.evict) - node.evicting
                node.evicting.update(taken)
                self._planner.making_room.setdefault(node.name, set()).update(target.evict)
                self.fleet.changed()
                kind = "wake" if target.wakes else "cold"
                self.estimates.started(model, node.name, kind, self.eta(model))
            try:
                if epoch is None:
                    await self._commands.evict(node, target.evict, "lru")
                    info, started, woken, evicted = await self._commands.load(node, entry)
                else:
                    info, started, woken, evicted = await self._commands.load(
                        node, entry, epoch=epoch, instance=boot, evict=target.evict
                    )
            except Fenced as exc:
                replans += 1
                log.info("neuron %s: %s; planning %s again", node.name, exc, model)
                if replans > MAX_REPLANS:
                    raise NoCapacity(
                        f"cannot load {model}: the fleet kept changing under "
                        f"{MAX_REPLANS} plans; retry shortly",
                        retry_after=self._retry_after,
                    ) from None
                continue
            except Refused as exc:
                refused[node.name] = str(exc)
                self._metrics.load_failures.labels(model, node.name).inc()
                log.warning("neuron %s refused %s: %s", node.name, model, exc)
                continue
            except CortexError:
                self._metrics.load_failures.labels(model, node.name).inc()
                raise
            finally:
                self._planner.pending[node.name].discard(model)
                node.evicting.difference_update(taken)
                self._planner.making_room[node.name].difference_update(target.evict)
                self.fleet.changed()
                self.estimates.ended(model)
            if info is not None:  # an older neuron: its answer is all this cortex knows
                node.models[model] = info
                self.fleet.changed()
                node.changed = time.monotonic()
            node.last_used[model] = time.monotonic()
            for victim in evicted:
                self._metrics.evictions.labels(victim, node.name, "lru").inc()
            self._metrics.observe_node(node)
            elapsed = time.monotonic() - began
            if started or woken:
                kind = "wake" if woken else "cold"
                self.estimates.observe(model, node.name, kind, elapsed)
                self._metrics.ready_seconds.labels(model, kind).observe(elapsed)
            if woken:
                self._metrics.wakes.labels(model, node.name).inc()
                log.info("woke %s on %s in %.1fs", model, node.name, elapsed)
            elif started:
                self._metrics.cold_starts.labels(model, node.name).inc()
                self._metrics.load_seconds.labels(model, node.name).observe(elapsed)
                log.info("loaded %s on %s in %.1fs", model, node.name, elapsed)
            else:
                log.info("%s is ready on %s (loaded by another)", model, node.name)
            return node

    def _ready(self, model: str, only: str | None) -> Node | None:
        ready = self.fleet.ready_nodes(model)
        if only is None:
            return ready[0] if ready else None
        node = self.fleet.node(only)
        return node if node in ready else None

    def _loading(self, model: str, node: str) -> bool:
        return (model, node) in self._loads

    def eta(self, model: str) -> Eta:
        """Placement's cost of a wake or a cold load of ``model``: see
        :meth:`Planner.eta <cortex.fleet.planner.Planner.eta>`."""
        return self._planner.eta(model)

    def candidate(self, node: Node) -> Candidate:
        """What :func:`~cortex.fleet.placement.plan` needs to know about ``node``, as of now:
        see :meth:`Planner.candidate <cortex.fleet.planner.Planner.candidate>`."""
        return self._planner.candidate(node)

    # --- by hand ---------------------------------------------------------------------

    async def load(self, model: str, node: str | None) -> tuple[Node, float]:
        """``cortex load``: make ``model`` ready (on ``node`` when given)."""
        if node is not None:
            self._known_node(node)
        self.housekeeper.loaded_by_hand(model, node)
        began = time.monotonic()
        where = await self.ensure(model, node)
        return where, time.monotonic() - began

    async def unload(self, model: str, node: str | None) -> list[str]:
        """``cortex unload``: unload ``model`` from ``node`` (or everywhere); the neurons."""
        targets = [self._known_node(node)] if node is not None else self.fleet.up()
        holding = [n for n in targets if n.up and model in n.models]
        if not holding:
            where = f"on {node}" if node else "on any neuron"
            raise ModelNotFound(f"model {model!r} is not loaded {where}", param="model")
        done = await asyncio.gather(
            *(self._commands.unload(n, model, "manual", force=True) for n in holding)
        )
        for n in holding:
            entry = self.fleet.entry(model)
            if entry is not None and n.name in entry.pinned_on:
                self.housekeeper.unloaded_by_hand(model, n.name)
                log.warning("%s is pinned on %s: unloaded by hand, not reloaded", model, n.name)
        return [n.name for n, gone in zip(holding, done, strict=True) if gone]

    def _known_node(self, name: str) -> Node:
        try:
            return self.fleet.node(name)
        except KeyError:
            names = ", ".join(n.name for n in self.fleet.nodes)
            raise ModelNotFound(f"no neuron named {name!r} (configured: {names})") from None

    # --- housekeeping ----------------------------------------------------------------

    async def run(self) -> None:
        """Idle unload and pins, every ``check_interval``, until cancelled
        (:class:`~cortex.fleet.housekeeping.Housekeeper`)."""
        await self.housekeeper.run()

    async def housekeeping(self) -> None:
        """One round of :meth:`run`."""
        await self.housekeeper.housekeeping()
