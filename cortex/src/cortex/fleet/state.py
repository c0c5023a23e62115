"""The fleet as last polled: one :class:`Node` per configured neuron.

Written only by the poller (and the in-flight counters by the relay); read by routing and
the fleet views. Everything runs on one event loop, so no locks are needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cortex.settings import Catalogue, CatalogueModel, NeuronEntry


@dataclass(frozen=True, slots=True)
class Load:
    """A model's load on a neuron, as its engine reported it at the last poll.

    ``running`` and ``waiting`` are the engine's request counts, ``kv_cache_usage`` its KV
    cache in use (0-1). A neuron that does not report them (older versions, an engine whose
    metrics did not answer) leaves them ``None``.
    """

    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None

    @classmethod
    def of(cls, info: dict[str, Any]) -> Load:
        """Read from one ``ModelInfo``; an absent or invalid value is ``None``."""
        kv = info.get("kv_cache_usage")
        return cls(
            running=_count(info.get("running")),
            waiting=_count(info.get("waiting")),
            kv_cache_usage=(
                float(kv)
                if isinstance(kv, int | float) and not isinstance(kv, bool) and 0 <= kv <= 1
                else None
            ),
        )

    @property
    def queued(self) -> int | None:
        """Running plus waiting, when the engine reported both."""
        if self.running is None or self.waiting is None:
            return None
        return self.running + self.waiting


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(eq=False)
class Node:
    name: str
    base: str
    token: str | None
    up: bool = False
    failures: int = 0
    last_error: str | None = None
    health: dict[str, Any] | None = None
    discovery: dict[str, Any] | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``ModelInfo`` by model id, as the neuron last reported them."""
    in_flight: int = 0
    """Requests this cortex has routed to the node that have not finished."""
    model_in_flight: dict[str, int] = field(default_factory=dict)
    """The same, by model: a model with requests in flight is never evicted."""
    model_waiting: dict[str, int] = field(default_factory=dict)
    """Of those, by model, the ones no answer byte has come back for yet (a stream's first
    event; a whole answer's end): the engine is queueing or prefilling them, which delays a
    new request's first token far more than requests that are decoding. Prefix routing's
    guard reads it; counted only with ``[routing] policy = "prefix"``, and not for
    ``/v1/responses``, whose streams send events before the first token."""
    loads: dict[str, Load] = field(default_factory=dict)
    """Model id → its engine's load as of the last poll (models that report one)."""
    queued_others: dict[str, int] = field(default_factory=dict)
    """Model id → the engine's running + waiting at the last poll less this cortex's own
    requests there at the time: the part of the engine's load this cortex cannot see."""
    others: dict[str, int] = field(default_factory=dict)
    """Model id → requests in flight there from clients other than this cortex, as of the last
    poll: the neuron's ``in_flight`` less this cortex's own requests at the time."""
    last_used: dict[str, float] = field(default_factory=dict)
    """Model id → when a request for it last started or ended here (monotonic)."""
    used: dict[str, float] = field(default_factory=dict)
    """Model id → when a request for it last started or ended on the neuron, from any
    replica, as the neuron reported it (its ``idle_s``, turned into this cortex's monotonic
    clock when the answer arrived): what idle unload measures. Not what eviction ranks by
    (:meth:`used_at`): the turn into this clock differs between replicas by the answer's
    transit time, enough to swap two models used a few milliseconds apart."""
    seen: float = 0.0
    """When ``models`` arrived (monotonic): how old its ``state_s`` figures are."""
    instance: str | None = None
    """The neuron's boot id, as of ``models`` (``None``: it names none, or not read yet)."""
    epoch: int | None = None
    """The neuron's epoch of ``models``: an answer with an older one is not applied."""
    evicting: set[str] = field(default_factory=set)
    """Models this cortex is unloading here: no longer routed to, whatever the poll says."""
    changed: float = 0.0
    """When this cortex last loaded or unloaded a model here: a poll sent before then is
    stale about ``models`` and must not undo what cortex knows (monotonic)."""

    @classmethod
    def from_entry(cls, entry: NeuronEntry) -> Node:
        return cls(name=entry.name, base=entry.base, token=entry.token)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def auth(self) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as raw pairs, for the relay's requests."""
        return [(b"authorization", b"Bearer " + self.token.encode())] if self.token else []

    def busy(self, model: str) -> int:
        """This cortex's own requests for ``model`` here, now."""
        return self.model_in_flight.get(model, 0)

    def in_use(self, model: str) -> int:
        """Requests for ``model`` here from anyone: ours now, plus others' at the last poll.

        Not the neuron's own count: that one is as old as the last poll, and it counts this
        cortex's requests too, so a model whose requests have just ended would look busy
        until the next poll and would not be put to sleep when idle. (Placement uses the
        neuron's count instead, read just before it plans: the same on every replica.)
        """
        return self.busy(model) + self.others.get(model, 0)

    def used_at(self, model: str) -> float:
        """When ``model`` was last used here, in unix seconds by the neuron's clock: its
        ``last_used``, or for a model never used, its ``since`` (when it entered its state).
        Numbers from the neuron's answer, not from when it arrived, so every replica that read
        the same answer ranks alike. A neuron that reports neither (older than issue 24):
        this cortex's own record, in unix seconds too (0: never)."""
        info = self.models.get(model) or {}
        for key in ("last_used", "since"):
            value = info.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        own = self.last_used.get(model)
        return 0.0 if own is None else time.time() - (time.monotonic() - own)

    def state_age(self, model: str) -> float | None:
        """Seconds ``model`` has been in its current state, by the neuron's count as of its
        answer plus the time since it arrived (no two hosts' clocks compared); ``None``:
        not reported."""
        state_s = (self.models.get(model) or {}).get("state_s")
        if not isinstance(state_s, int | float) or isinstance(state_s, bool):
            return None
        return float(state_s) + max(0.0, time.monotonic() - self.seen)

    def newer(self, instance: str | None, epoch: int | None) -> bool:
        """Is a state named ``(instance, epoch)`` at least as new as what is kept?"""
        if instance is None or epoch is None or instance != self.instance:
            return True
        return self.epoch is None or epoch >= self.epoch

    def status_of(self, model: str) -> str | None:
        info = self.models.get(model)
        return str(info.get("status")) if info else None

    @property
    def status(self) -> str:
        if not self.up:
            return "down"
        return str((self.health or {}).get("status", "up"))


@dataclass
class Fleet:
    """The nodes, and what routing asks of them.

    :meth:`ready_nodes` and :meth:`knows` run for every request. They answer from views that
    are built once and kept until :meth:`changed`, so routing costs the same in front of a
    hundred neurons as in front of one. (A scan of every node cost a quarter of cortex's CPU
    per request with 100 nodes: bench/README.md, ``routing.py``.) Whoever changes a node's ``up``,
    ``health``, ``models`` or ``evicting`` calls :meth:`changed` before anything awaits.
    """

    nodes: list[Node]
    catalogue: Catalogue
    _entries: dict[str, CatalogueModel] = field(init=False, repr=False)
    _by_name: dict[str, Node] = field(init=False, repr=False)
    _ready: dict[str, list[Node]] = field(init=False, repr=False, default_factory=dict)
    _reported: frozenset[str] | None = field(init=False, repr=False, default=None)
    listeners: list[Callable[[], None]] = field(init=False, repr=False, default_factory=list)
    """Called by :meth:`changed`, after the views are cleared (they must not await)."""

    def __post_init__(self) -> None:
        self._entries = {m.id: m for m in self.catalogue.models}
        self._by_name = {n.name: n for n in self.nodes}

    def changed(self) -> None:
        """A node's ``up``, ``health``, ``models`` or ``evicting`` changed: rebuild the views."""
        self._ready.clear()
        self._reported = None
        for listener in self.listeners:
            listener()

    def entry(self, model: str) -> CatalogueModel | None:
        """The catalogue entry of ``model``, if it has one."""
        return self._entries.get(model)

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError if none is configured)."""
        return self._by_name[name]

    @classmethod
    def build(cls, entries: list[NeuronEntry], catalogue: Catalogue) -> Fleet:
        return cls([Node.from_entry(e) for e in entries], catalogue)

    def up(self) -> list[Node]:
        return [n for n in self.nodes if n.up]

    def ready_nodes(self, model: str) -> list[Node]:
        """Up, not draining, and serving ``model`` (a list that is kept: do not change it)."""
        nodes = self._ready.get(model)
        if nodes is None:
            nodes = self.scan(model)
            if nodes:  # (not kept when empty: any string a client sends would stay here)
                self._ready[model] = nodes
        return nodes

    def scan(self, model: str) -> list[Node]:
        """What :meth:`ready_nodes` answers, from the nodes as they are now."""
        return [
            n
            for n in self.nodes
            if n.up
            and n.status != "draining"
            and n.status_of(model) == "ready"
            and model not in n.evicting
        ]

    def knows(self, model: str) -> bool:
        """In the catalogue, or reported by some neuron that is up (in any state)."""
        if model in self._entries:
            return True
        if self._reported is None:
            self._reported = self.reported()
        return model in self._reported

    def reported(self) -> frozenset[str]:
        """Every model some neuron that is up reports, from the nodes as they are now."""
        return frozenset(model for n in self.nodes if n.up for model in n.models)

    def locations(self) -> dict[str, list[dict[str, str]]]:
        """Model id → ``[{"node", "status"}]`` for every model some up neuron reports."""
        where: dict[str, list[dict[str, str]]] = {m.id: [] for m in self.catalogue.models}
        for node in self.up():
            for model_id, info in node.models.items():
                where.setdefault(model_id, []).append(
                    {"node": node.name, "status": str(info.get("status"))}
                )
        return where
