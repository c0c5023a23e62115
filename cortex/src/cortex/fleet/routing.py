"""Which neuron serves a request: plain values in, plain values out."""

from __future__ import annotations

from cortex.fleet.state import Node


def rank(nodes: list[Node], turn: int = 0) -> list[Node]:
    """``nodes`` least busy first (this cortex's in-flight count, then the neuron's own).

    Ties rotate with ``turn`` so equal neurons share the load instead of the first one
    taking every request.
    """
    if len(nodes) < 2:
        return nodes
    count = len(nodes)
    order = {id(n): (i - turn) % count for i, n in enumerate(nodes)}
    return sorted(nodes, key=lambda n: (n.in_flight, order[id(n)]))
