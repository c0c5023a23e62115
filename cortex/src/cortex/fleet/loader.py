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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp

from cortex.errors import (
    CortexError,
    LoadFailed,
    ModelNotFound,
    NoCapacity,
    StillLoading,
    Unplaceable,
    UpstreamError,
    upstream_message,
)
from cortex.fleet import contract
from cortex.fleet.eta import Estimates, reported, retry_after
from cortex.fleet.placement import (
    Candidate,
    Device,
    Eta,
    NeverFits,
    NoRoom,
    Plan,
    Resident,
    Want,
    plan,
)
from cortex.fleet.poller import Poller
from cortex.fleet.state import Fleet, Node
from cortex.metrics import CortexMetrics
from cortex.settings import CatalogueModel, CortexSettings
from cortex.upstream.client import read_at_most

log = logging.getLogger("cortex.loader")

JSON = {"Content-Type": "application/json"}
MAX_REPLANS = 20
"""Plans one cold load may make again after neurons answered that their state moved on."""
FENCED = frozenset({"stale_epoch", "model_busy"})


class Refused(Exception):
    """A neuron would not take the load now (409, 503, unreachable): try another one."""


class Fenced(Exception):
    """The neuron's state moved on from the plan (its new state is applied): plan again."""


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
        self._instance = settings.instance
        self._session = session
        self._cfg = settings.loading
        self._retry_after = settings.gateway.retry_after
        self._max_answer = settings.poll.max_answer_bytes
        self._metrics = metrics
        self._loads: dict[tuple[str, str | None], asyncio.Task[Node]] = {}
        self._pending: dict[str, set[str]] = {}
        """Node name → models this cortex is loading there (not yet in the neuron's list)."""
        self._making_room: dict[str, set[str]] = {}
        """Node name → models this cortex's loads in progress are evicting there."""
        self._planning = asyncio.Lock()
        self._pin_tries: dict[tuple[str, str], float] = {}
        self._unpinned: set[tuple[str, str]] = set()
        """Pins unloaded by hand: left alone until loaded by hand again (or a restart)."""
        self._background: set[asyncio.Task[Any]] = set()
        self.estimates = Estimates(self._cfg.cold_estimate, self._cfg.wake_estimate)
        self._asleep_since: dict[tuple[str, str], float] = {}
        """(node, model) → when this cortex first saw it sleeping (monotonic)."""

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
        want = _want(entry)
        began = time.monotonic()
        refused: dict[str, str] = {}
        replans = 0
        if not self._ready(model, only):
            await self._poller.refresh()  # plan from the neurons' word as of now
        while True:
            async with self._planning:
                if (ready := self._ready(model, only)) is not None:
                    return ready
                target = self._plan(want, only, refused)
                node = self.fleet.node(target.node)
                epoch = node.epoch  # what the plan was made from (None: an older neuron)
                boot = node.instance
                self._pending.setdefault(node.name, set()).add(model)
                # (A victim already going, say to an idle sleep, stays out of routing when
                # this load is done with it: only what this load took out is put back.)
                taken = set(target.evict) - node.evicting
                node.evicting.update(taken)
                self._making_room.setdefault(node.name, set()).update(target.evict)
                self.fleet.changed()
                kind = "wake" if target.wakes else "cold"
                self.estimates.started(model, node.name, kind, self.eta(model))
            try:
                if epoch is None:
                    await self._evict(node, target.evict, "lru")
                    info, started, woken, evicted = await self._send_load(node, entry)
                else:
                    info, started, woken, evicted = await self._send_load(
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
                self._pending[node.name].discard(model)
                node.evicting.difference_update(taken)
                self._making_room[node.name].difference_update(target.evict)
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

    def _plan(self, want: Want, only: str | None, refused: dict[str, str]) -> Plan:
        nodes = [
            n
            for n in self.fleet.nodes
            if n.up
            and n.status != "draining"
            and n.name not in refused
            and (only is None or n.name == only)
        ]
        if only is not None and not nodes:
            node = self.fleet.node(only)
            why = refused.get(only) or f"neuron {only} is {node.status}"
            raise NoCapacity(
                f"cannot load {want.id} on {only}: {why}", retry_after=self._retry_after
            )
        try:
            return plan(want, [self.candidate(n) for n in nodes], self.eta(want.id))
        except NoRoom as exc:
            raise NoCapacity(str(exc), retry_after=self._retry_after) from None
        except NeverFits as exc:
            if refused:
                detail = "; ".join(f"{name}: {why}" for name, why in refused.items())
                raise NoCapacity(
                    f"no neuron took {want.id} ({detail})", retry_after=self._retry_after
                ) from None
            unseen = [n.name for n in self.fleet.nodes if not n.up or n.status == "draining"]
            if unseen and only is None:
                raise NoCapacity(
                    f"{exc}; neurons not available now: {', '.join(unseen)}",
                    retry_after=self._retry_after,
                ) from None
            raise Unplaceable(str(exc), param="model") from None

    def eta(self, model: str) -> Eta:
        """Placement's cost of a wake or a cold load of ``model``: from what the neurons report
        (the same on every replica), never from this cortex's own timings."""
        defaults = {"cold": self._cfg.cold_estimate, "wake": self._cfg.wake_estimate}
        return reported(model, {n.name: n.models for n in self.fleet.up()}, defaults)

    def candidate(self, node: Node) -> Candidate:
        """What :func:`plan` needs to know about ``node``, as of now.

        Read from the neuron's answer, so that replicas that read the same answer make the
        same plan: last use by the neuron's clock (:meth:`Node.used_at`), requests in flight
        as the neuron counted them, time since a wake by the neuron's count. This cortex's
        own knowledge only adds what the neuron cannot have seen yet, and only ever as a
        veto (its own requests started since, the loads and evictions it has sent): the
        neuron refuses the same (``model_busy``, ``stale_epoch``) once they reach it.
        """
        health = node.health or {}
        discovery = node.discovery or {}
        totals = {
            d.get("index"): int(d.get("vram_total_mb") or 0)
            for d in discovery.get("devices", [])
            if isinstance(d, dict)
        }
        devices = []
        for d in health.get("devices", []):
            free, used = int(d.get("vram_free_mb") or 0), int(d.get("vram_used_mb") or 0)
            devices.append(
                Device(int(d.get("index", 0)), totals.get(d.get("index")) or free + used, free)
            )
        if not devices and totals:  # health not sampled yet: assume the devices are empty
            devices = [Device(int(i or 0), t, t) for i, t in totals.items()]
        limit = health.get("max_loaded_models", discovery.get("max_loaded_models"))
        # Going: the victims of this cortex's own loads in progress (their room is taken).
        # A model it is putting to sleep or unloading for idleness or by hand is planned as
        # the neuron reports it, like every other replica does: a plan that races that
        # change is fenced at the neuron. (An older neuron fences nothing: all of them.)
        going = node.evicting if node.epoch is None else self._making_room.get(node.name, ())
        residents = []
        for model_id, info in node.models.items():
            entry = self.fleet.entry(model_id)
            status = str(info.get("status"))
            age = node.state_age(model_id)
            settling = (
                status == "ready"
                and info.get("last_wake_s") is not None
                and age is not None
                and age < self._cfg.min_residency
            )
            # The neuron's count as of its answer (every replica read the same), and this
            # cortex's requests started since: a veto the neuron would apply anyway.
            in_flight = max(int(info.get("in_flight") or 0), node.busy(model_id))
            residents.append(
                Resident(
                    id=model_id,
                    status="unloading" if model_id in going else status,
                    vram_mb=int(info.get("vram_used_mb") or 0),
                    devices=tuple(int(d) for d in info.get("devices") or ()),
                    in_flight=in_flight,
                    last_used=node.used_at(model_id),
                    priority=entry.priority if entry else 0,
                    pinned=entry is not None and node.name in entry.pinned_on,
                    settling=settling,
                )
            )
        for model_id in self._pending.get(node.name, set()) - node.models.keys():
            entry = self.fleet.entry(model_id)
            vram = (entry.vram_mb or 0) if entry else 0
            residents.append(Resident(id=model_id, status="loading", vram_mb=vram))
        harnesses = discovery.get("harnesses")
        return Candidate(
            name=node.name,
            devices=tuple(devices),
            max_models=int(limit) if isinstance(limit, int) else None,
            residents=tuple(residents),
            harnesses=tuple(harnesses) if isinstance(harnesses, list) else None,
        )

    async def _send_load(
        self,
        node: Node,
        entry: CatalogueModel,
        *,
        epoch: int | None = None,
        instance: str | None = None,
        evict: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any] | None, bool, bool, tuple[str, ...]]:
        """``POST /models/load`` on ``node`` (with ``epoch``, ``instance`` and ``evict`` when
        given).

        Returns the ready ``ModelInfo`` when the neuron sent no state (else the state is
        applied to ``node`` and this is ``None``), whether this load started the engine,
        whether it woke a sleeping one, and what the neuron evicted for it. Raises
        :class:`Fenced` (plan again), :class:`Refused` (try elsewhere) or
        :class:`LoadFailed` (the model itself).
        """
        timeout = aiohttp.ClientTimeout(total=self._cfg.load_timeout)
        body: dict[str, Any] = entry.spec()
        if epoch is not None:
            body |= {"epoch": epoch, "evict": list(evict)}
            if instance is not None:
                body["instance"] = instance
            log.info("loading %s on %s (epoch %d, evicting %s)", entry.id, node.name, epoch, evict)
        else:
            log.info("loading %s on %s", entry.id, node.name)
        asked = time.monotonic()
        try:
            async with self._session.post(
                node.base + "/models/load",
                data=json.dumps(body),
                headers={**JSON, **node.headers(), **self._from()},
                timeout=timeout,
            ) as response:
                raw = await read_at_most(response, self._max_answer)
        except TimeoutError:
            raise LoadFailed(
                f"neuron {node.name} did not finish loading {entry.id} "
                f"in {self._cfg.load_timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Refused(f"unreachable: {exc}") from None
        message = upstream_message(raw)
        answer = _json(raw)
        named = self._apply(node, answer, asked)
        if response.status == 200:
            started = answer.get("started", True) is not False
            woken = answer.get("woken") is True
            evicted = answer.get("evicted")
            gone = (
                tuple(m for m in evicted if isinstance(m, str))
                if isinstance(evicted, list)
                else evict
            )
            if named:
                return None, started, woken, gone
            try:
                return contract.model(answer.get("model")), started, woken, gone
            except contract.BreachError:  # loaded all the same; the next poll says the rest
                ready = contract.model({"id": entry.id, "status": "ready"})
                return ready, started, woken, gone
        if response.status == 409 and named and _code(answer) in FENCED:
            raise Fenced(message)
        if response.status in (409, 503):
            raise Refused(message)
        raise LoadFailed(f"neuron {node.name} could not load {entry.id}: {message}")

    def _apply(self, node: Node, answer: dict[str, Any], asked: float) -> bool:
        """Keep the neuron state an answer carries; False if it carries none (or a bad one)."""
        try:
            state = contract.named_state(answer.get("state"))
        except contract.BreachError as exc:
            log.warning("neuron %s: %s", node.name, exc)
            return False
        if state is None:
            return False
        self._poller.apply(
            node,
            contract.by_id(state.models),
            instance=state.instance,
            epoch=state.epoch,
            asked=asked,
            ours_before=dict(node.model_in_flight),
            status=state.status,
        )
        return True

    def _from(self) -> dict[str, str]:
        return {"X-Cortex-Instance": self._instance}

    # --- unloading -------------------------------------------------------------------

    async def _evict(self, node: Node, models: tuple[str, ...], reason: str) -> None:
        if models:
            await asyncio.gather(*(self._unload(node, m, reason) for m in models))

    async def _unload(
        self,
        node: Node,
        model: str,
        reason: str,
        *,
        epoch: int | None = None,
        instance: str | None = None,
        idle: float | None = None,
        force: bool = False,
    ) -> bool:
        """Unload ``model`` from ``node``; False if the neuron did not have it.

        ``epoch``: the neuron state the decision was made from; ``instance``: the boot of
        the neuron it was made on (another boot refuses it); ``idle``: the neuron must
        have seen no use of it for this long; ``force``: requests in flight finish first
        (else the neuron refuses). Raises :class:`Fenced` (the neuron said no, and its state
        is applied) or :class:`UpstreamError`.
        """
        log.info("unloading %s from %s (%s)", model, node.name, reason)
        body: dict[str, Any] = {"model_id": model}
        if epoch is not None:
            body["epoch"] = epoch
        if instance is not None:
            body["instance"] = instance
        if idle is not None:
            body["idle_at_least"] = idle
        if force:
            body["force"] = True
        node.evicting.add(model)
        self.fleet.changed()
        asked = time.monotonic()
        try:
            async with self._session.post(
                node.base + "/models/unload",
                data=json.dumps(body),
                headers={**JSON, **node.headers(), **self._from()},
                timeout=aiohttp.ClientTimeout(total=self._cfg.load_timeout),
            ) as response:
                raw = await read_at_most(response, self._max_answer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"neuron {node.name} could not unload {model}: {exc}") from None
        finally:
            node.evicting.discard(model)
            self.fleet.changed()
        answer = _json(raw)
        named = self._apply(node, answer, asked)
        if response.status == 404:
            if not named:
                node.models.pop(model, None)
                self.fleet.changed()
                node.changed = time.monotonic()
            return False
        if response.status == 409 and named and _code(answer) in FENCED:
            raise Fenced(upstream_message(raw))
        if response.status != 200:
            raise UpstreamError(
                f"neuron {node.name} could not unload {model}: {upstream_message(raw)}"
            )
        if not named:
            node.models.pop(model, None)
            self.fleet.changed()
            node.changed = time.monotonic()
        node.last_used.pop(model, None)
        self._metrics.evictions.labels(model, node.name, reason).inc()
        self._metrics.observe_node(node)
        return True

    # --- by hand ---------------------------------------------------------------------

    async def load(self, model: str, node: str | None) -> tuple[Node, float]:
        """``cortex load``: make ``model`` ready (on ``node`` when given)."""
        if node is not None:
            self._known_node(node)
            self._unpinned.discard((model, node))
        else:
            self._unpinned = {k for k in self._unpinned if k[0] != model}
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
            *(self._unload(n, model, "manual", force=True) for n in holding)
        )
        for n in holding:
            entry = self.fleet.entry(model)
            if entry is not None and n.name in entry.pinned_on:
                self._unpinned.add((model, n.name))
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
            async with self._session.post(
                node.base + "/models/sleep",
                data=json.dumps(body),
                headers={**JSON, **node.headers(), **self._from()},
                timeout=aiohttp.ClientTimeout(total=self._cfg.load_timeout),
            ) as response:
                raw = await read_at_most(response, self._max_answer)
        except (aiohttp.ClientError, TimeoutError) as exc:  # TooLarge included: a failed sleep
            node.evicting.discard(model)
            self.fleet.changed()
            log.warning("idle sleep of %s on %s failed: %s", model, node.name, exc)
            return
        node.evicting.discard(model)
        self.fleet.changed()
        answer = _json(raw)
        self._apply(node, answer, asked)
        code = _code(answer)
        if response.status == 200:
            self._metrics.sleeps.labels(model, node.name, "idle").inc()
            self._metrics.observe_node(node)
            return
        if response.status == 409 and code in FENCED:
            log.info("%s stays awake on %s: %s", model, node.name, upstream_message(raw))
            return
        if response.status == 404 and code == "model_not_found":
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
            await self._unload(node, model, reason, instance=boot, idle=ttl * 0.9)
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
        if node.status_of(entry.id) in ("ready", "loading") or (entry.id, name) in self._loads:
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
            await self.ensure(model, node)
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


def _want(entry: CatalogueModel) -> Want:
    return Want(
        id=entry.id,
        harness=entry.harness,
        vram_mb=entry.vram_mb,
        tensor_parallel=entry.tensor_parallel,
        min_devices=entry.min_devices,
        min_device_vram_mb=entry.min_device_vram_mb,
        pinned_on=frozenset(entry.pinned_on),
    )


def _code(answer: dict[str, Any]) -> str | None:
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _json(body: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(body)
        if isinstance(data, dict):
            return data
    return {}
