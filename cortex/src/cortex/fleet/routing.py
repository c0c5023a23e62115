"""Which neuron serves a request: plain values in, plain values out."""

from __future__ import annotations

from operator import attrgetter

from cortex.fleet.state import Node

_in_flight = attrgetter("in_flight")


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
