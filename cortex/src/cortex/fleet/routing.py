"""Which neuron serves a request: plain values in, plain values out (and :class:`Router`,
which applies the configured policy and counts its decisions)."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from cortex.fleet.prefix import PrefixIndex, anchor_key, pieces, prompt_hashes, rendezvous
from cortex.fleet.state import Fleet, Node

if TYPE_CHECKING:
    from cortex.metrics import CortexMetrics
    from cortex.settings import Routing

_in_flight = attrgetter("in_flight")

TRIES = 2
"""Neurons the relay tries for one request: the first, and the next when the first cannot be
reached (the relay takes ``nodes[:TRIES]``). Prefix routing orders no more than that many."""


def rank(nodes: list[Node], model: str, turn: int = 0) -> list[Node]:
    """``nodes`` (all serving ``model``) least loaded first.

    When every one of them reports its engine's load for ``model``, the order is by load
    score: the engine's waiting + running at the last poll, plus the requests this cortex has
    sent there since that poll, less its requests there that have finished since. That is
    the engine's count less this cortex's own requests at the poll (``Node.queued_others``)
    plus this cortex's requests in flight there now. Every replica sees the same engine
    numbers, so each one's choice accounts for the others' requests (as of the last poll),
    and for its own to the moment. Equal scores go to the emptier KV cache.

    Otherwise (a neuron that does not report load) the order is by this cortex's own
    requests in flight on each neuron, as before the engines reported load.

    Ties rotate with ``turn`` so equal neurons share the load instead of the first one
    taking every request: the list is rotated by ``turn``, then sorted by load, which keeps
    the rotated order among equals (a list sort is stable). The in-flight key is read in C;
    the load score, in Python, costs about three times as much (bench/README.md, "Figures
    behind the code").
    """
    if len(nodes) < 2:
        return nodes
    start = turn % len(nodes)
    ranked = nodes[start:] + nodes[:start]
    # The score and the KV tie-break in one float: counts are whole numbers and half the
    # KV share is at most 0.5, so it only orders equal counts.
    keys: list[float] = []
    append = keys.append
    for node in ranked:
        load = node.loads.get(model)
        if load is None:
            ranked.sort(key=_in_flight)
            return ranked
        queued = node.queued_others.get(model, 0) + node.model_in_flight.get(model, 0)
        append(queued + (load.kv_cache_usage or 0.0) / 2)
    order = sorted(range(len(ranked)), key=keys.__getitem__)
    return [ranked[i] for i in order]


def scores(nodes: list[Node], model: str) -> list[float]:
    """Each node's load score for ``model``, as :func:`rank` orders them (lower is emptier).

    The engine's load score where every node reports one; otherwise this cortex's requests
    in flight on each node.
    """
    out: list[float] = []
    try:  # a subscript, not .get() and a test: a node that does not report load is rare
        for n in nodes:
            out.append(
                n.queued_others.get(model, 0)
                + n.model_in_flight.get(model, 0)
                + (n.loads[model].kv_cache_usage or 0.0) * 0.5  # (the same float as / 2)
            )
    except KeyError:
        return [float(n.in_flight) for n in nodes]
    return out


PREFIX = "prefix"
"""A neuron holding more of the prompt than the least loaded one took it (within the guard),
or the least loaded one holds the most of it."""
LOAD = "load"
"""No neuron is known to hold more of the prompt than the others: the least loaded took it."""
GUARD = "guard"
"""The neuron holding more of the prompt was too loaded: the least loaded took it instead."""


def choose(
    nodes: list[Node],
    load: list[float],
    held: dict[str, int],
    total: int,
    key: Callable[[], int],
    margin: float,
    ratio: float,
    model: str | None = None,
    most: int | None = None,
) -> tuple[list[Node], str]:
    """``nodes`` best first, and why, for a prompt of ``total`` characters of which each
    engine named in ``held`` holds that many leading characters; only the first ``most``
    (None: all).

    ``load`` is each node's score (:func:`scores`). The node holding the most of the prompt
    (the least loaded among equals) comes first unless the guard, on the load of this
    moment, says no: its score may exceed the least loaded node's by at most ``(margin +
    ratio * that score) * gain``, where ``gain`` is the share of the prompt it holds beyond
    what the least loaded node holds; and, given ``model``, its engine must not have had
    requests waiting at the last poll while the least loaded one's had none (a queue there
    costs this request more than the prefix saves). A prompt whose only cached part is one
    every engine holds (a common system prompt) gains nothing, so load decides; a
    conversation whose whole history is on one engine may wait for it behind up to
    ``margin`` requests more. Otherwise the least loaded node comes first. Equal scores go
    to the highest rendezvous weight of ``key()`` (:func:`cortex.fleet.prefix.rendezvous`;
    ``key`` is called only then), so replicas that know nothing of a conversation send it
    to the same engine. The rest follow by load (the relay's second try); asked for two at
    most, they are found without sorting.
    """
    count = len(nodes)
    order: list[int] | None = None
    if count == 2:
        low, next_low = (0, 1) if load[0] <= load[1] else (1, 0)
    elif most is not None and most <= 2 and count > 2:  # the relay's two tries: no sort
        low, next_low = _lowest_two(load)
    else:
        order = sorted(range(count), key=load.__getitem__)
        low = order[0]
        next_low = order[1] if count > 1 else low
    least = load[low]
    first = low
    if next_low != low and load[next_low] == least:  # rare under load: no hashing otherwise
        k = key()
        tied = [i for i, score in enumerate(load) if score == least]
        first = max(tied, key=lambda i: rendezvous(k, nodes[i].name))
    reason = LOAD
    if held and total > 0:
        first, reason = _holder(nodes, load, held, total, first, margin, ratio, model)
    if order is None:  # the next one by load, after ``first``
        ranked = [nodes[first], nodes[low if first != low else next_low]]
    else:
        order.remove(first)
        ranked = [nodes[first]]
        ranked += [nodes[i] for i in order]
    if most is not None and len(ranked) > most:
        del ranked[most:]
    return ranked, reason


def _lowest_two(load: list[float]) -> tuple[int, int]:
    """The first two indices of ``load`` sorted (stably): the lowest score, then the next,
    each the earliest among equals. One pass, for :func:`choose`'s two tries."""
    a, b = (0, 1) if load[0] <= load[1] else (1, 0)
    la = load[a]
    lb = load[b]
    for i in range(2, len(load)):
        x = load[i]
        if x < lb:
            if x < la:
                a, b, la, lb = i, a, x, la
            else:
                b, lb = i, x
    return a, b


def _holder(
    nodes: list[Node],
    load: list[float],
    held: dict[str, int],
    total: int,
    first: int,
    margin: float,
    ratio: float,
    model: str | None,
) -> tuple[int, str]:
    """:func:`choose`'s decision between the least loaded node ``first`` and the one
    holding the most of the prompt: which comes first, and why.

    Among the nodes holding the most, the least loaded wins; among those, ``first`` if it
    is one, else the earliest in ``nodes`` (the node a walk over ``nodes`` in order picks).
    Only the engines named in ``held`` are walked (usually one or two), and the nodes'
    names listed only when one of them may come before ``first``.
    """
    base = held.get(nodes[first].name, 0)
    if base and len(held) == 1:  # ``first`` alone holds any of it: the usual case
        return first, PREFIX if len(nodes) > 1 else LOAD
    top = base
    best = first
    names: list[str] | None = None
    for engine, has in held.items():
        if has < top or (has == top and best == first):  # (``first`` is the least loaded)
            continue
        if names is None:
            names = [n.name for n in nodes]
        if engine not in names:  # no longer serving the model
            continue
        i = names.index(engine)
        if has > top or load[i] < load[best] or (load[i] == load[best] and i < best):
            top, best = has, i
    if top > base:
        allowed = (margin + ratio * load[first]) * (top - base) / total
        if load[best] - load[first] > allowed or (
            model is not None and _busier(nodes[best], nodes[first], model)
        ):
            return first, GUARD
        return best, PREFIX
    # ``first`` holds the most of it: a prefix decision if some node holds less.
    if len(held) < len(nodes):  # (names are unique: some node is not in ``held``)
        return first, PREFIX if base > 0 else LOAD
    if names is None:
        names = [n.name for n in nodes]
    low = min(held.get(name, 0) for name in names)
    return first, PREFIX if base > low else LOAD


def _waits(node: Node, model: str) -> bool:
    """Whether ``node``'s engine had requests for ``model`` waiting at the last poll."""
    load = node.loads.get(model)
    return load is not None and bool(load.waiting)


def _busier(holder: Node, least: Node, model: str) -> bool:
    """Whether ``holder``'s engine is further from a new request's first token than the
    least loaded one's, whatever their load scores: it had requests waiting at the last poll
    and the other none, or this cortex has more requests there that no token has come back
    for yet (queued or in their prefill, which a new request's prefill waits behind; a
    decoding request costs it little). Measured (bench/README.md, run 10): without the
    second test, prefix affinity's TTFT p95 was 22-28% above least-load's at 4 and 8 users,
    on two engines with a core each."""
    if _waits(holder, model) and not _waits(least, model):
        return True
    waiting = holder.model_waiting.get(model, 0)
    return waiting > 0 and waiting > least.model_waiting.get(model, 0)


class Router:
    """The relay's routing: :func:`rank` by load, or prefix affinity (``[routing] policy``).

    Only models ready on two or more neurons are routed by prefix; for those, each
    decision is counted in ``cortex_routing_decisions_total`` by reason. The index learns
    from :meth:`served`, called with the neuron that took the request, and forgets a
    neuron's part for a model when the model stops being ready there (:meth:`watch`).
    """

    def __init__(self, settings: Routing, metrics: CortexMetrics) -> None:
        self.settings = settings
        self.prefix = settings.policy == "prefix"
        self.index = PrefixIndex(settings.index_entries_per_model, settings.index_entries)
        # Read per request: plain attributes cost a third of a pydantic model's.
        self._chunk = settings.chunk_chars
        self._limit = settings.max_prompt_chars
        self._margin = settings.guard_margin
        self._ratio = settings.guard_ratio
        self.decisions = metrics.routing.counts
        self._fleet: Fleet | None = None
        self._ready: dict[str, dict[str, str | None]] = {}
        """Per model in the index: the neurons it was ready on (name → instance) when last
        seen; one whose model is no longer ready, or that restarted, is forgotten."""

    def watch(self, fleet: Fleet) -> None:
        """Forget what the index knows of a neuron for a model once ``fleet`` no longer has
        the model ready there, or the neuron restarted (a new ``instance``): its engine's
        KV cache is gone. Checked on every change of the fleet (not per request)."""
        self._fleet = fleet
        fleet.listeners.append(self.fleet_changed)

    def fleet_changed(self) -> None:
        """:meth:`Fleet.changed`'s listener: one scan per model in the index."""
        if self._fleet is None:
            return
        ready = self._ready
        models = self.index.models()
        for model in ready.keys() - set(models):
            del ready[model]
        for model in models:
            now = {n.name: n.instance for n in self._fleet.scan(model)}
            before = ready.get(model)
            if before is not None:
                for name, instance in before.items():
                    if name not in now or now[name] != instance:
                        self.index.forget(model, name)
            ready[model] = now

    def route(
        self,
        nodes: list[Node],
        model: str,
        label: str,
        path: str,
        payload: dict[str, Any],
        turn: int,
    ) -> tuple[list[Node], list[int] | None]:
        """``nodes`` (all serving ``model``) best first, and the prompt's prefix hashes to
        pass to :meth:`served` (None when there is nothing to learn). By prefix, only the
        first :data:`TRIES` of them."""
        if len(nodes) < 2:
            return nodes, None
        if not self.prefix:
            decided = (label, LOAD)
            self.decisions[decided] = self.decisions.get(decided, 0) + 1
            return rank(nodes, model, turn), None
        chunk = self._chunk
        hashes, ends = prompt_hashes(path, payload, chunk, self._limit)
        held = self.index.lookup(model, hashes, ends)

        def key() -> int:
            return anchor_key(*pieces(path, payload, 4), chunk)

        ranked, reason = choose(
            nodes,
            scores(nodes, model),
            held,
            ends[-1] if ends else 0,
            key,
            self._margin,
            self._ratio,
            model,
            TRIES,
        )
        decided = (label, reason)
        self.decisions[decided] = self.decisions.get(decided, 0) + 1
        return ranked, hashes or None

    def served(self, model: str, hashes: list[int], node: Node) -> None:
        """``node`` took a request whose prompt had ``hashes``: its engine now caches them."""
        if model not in self._ready and self._fleet is not None:
            self._ready[model] = {n.name: n.instance for n in self._fleet.scan(model)}
        self.index.record(model, hashes, node.name)
