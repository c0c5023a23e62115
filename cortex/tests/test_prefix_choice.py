"""The prefix decision's short cuts decide as the plain walk over every node does: the node
holding the most of the prompt (the least loaded among equals, then the earliest), the guard,
the reason; asked for the relay's two tries, the same first two nodes as the full order."""

from __future__ import annotations

import functools
import random

from cortex.fleet.prefix import rendezvous
from cortex.fleet.routing import GUARD, LOAD, PREFIX, TRIES, Router, choose
from cortex.fleet.state import Load, Node
from cortex.metrics import CortexMetrics
from cortex.settings import Routing


def walk(
    nodes: list[Node],
    load: list[float],
    held: dict[str, int],
    total: int,
    key: int,
    margin: float,
    ratio: float,
    model: str | None,
) -> tuple[list[str], str]:
    """The decision as specified, by brute force: every node visited, everything sorted."""
    least = min(load)
    tied = [i for i, score in enumerate(load) if score == least]
    first = max(tied, key=lambda i: rendezvous(key, nodes[i].name)) if len(tied) > 1 else tied[0]
    has = [held.get(n.name, 0) for n in nodes]
    reason = LOAD
    if held and total > 0:
        top = max(has)
        best = (
            first
            if has[first] == top
            else min((i for i in range(len(nodes)) if has[i] == top), key=lambda i: (load[i], i))
        )
        if top > has[first]:
            allowed = (margin + ratio * least) * (top - has[first]) / total

            def waits(node: Node) -> bool:
                got = node.loads.get(model) if model is not None else None
                return got is not None and bool(got.waiting)

            too_busy = load[best] - least > allowed
            if too_busy or (model is not None and waits(nodes[best]) and not waits(nodes[first])):
                reason = GUARD
            else:
                first, reason = best, PREFIX
        elif top > min(has):
            reason = PREFIX
    rest = sorted((i for i in range(len(nodes)) if i != first), key=lambda i: (load[i], i))
    return [nodes[i].name for i in [first, *rest]], reason


def random_case(rnd: random.Random) -> tuple[list[Node], list[float], dict[str, int], int]:
    count = rnd.randint(1, 9)
    nodes = [Node(name=f"n{i}", base="", token=None) for i in range(count)]
    for node in nodes:
        if rnd.random() < 0.9:
            node.loads["m"] = Load(running=1, waiting=rnd.choice([0, 0, 1]), kv_cache_usage=0.0)
    load = [float(rnd.choice([0, 0.5, 1, 2, 3, 5])) for _ in nodes]
    # Engines n9-n11 are not among the nodes (no longer serving the model).
    engines = rnd.sample(range(12), rnd.randint(0, 6))
    held = {f"n{e}": rnd.choice([0, 10, 50, 100, 100]) for e in engines}
    return nodes, load, held, rnd.choice([0, 100, 150])


def test_the_short_cuts_decide_as_the_walk_over_every_node() -> None:
    rnd = random.Random(22)
    for _ in range(20_000):
        nodes, load, held, total = random_case(rnd)
        key = rnd.randrange(1000)
        model = rnd.choice([None, "m"])
        want = walk(nodes, load, held, total, key, 2, 0.5, model)
        for most in (None, 1, 2, 3, 20):
            order = functools.partial(int, key)
            ranked, reason = choose(nodes, load, held, total, order, 2, 0.5, model, most)
            assert ([n.name for n in ranked], reason) == (
                want[0] if most is None else want[0][:most],
                want[1],
            ), (load, held, total, most)


def test_the_relay_s_two_tries_are_the_first_two_of_the_full_order() -> None:
    load = [3.0, 1.0, 1.0, 0.0, 2.0]
    nodes = [Node(name=f"n{i}", base="", token=None) for i in range(len(load))]
    full, _ = choose(nodes, load, {"n4": 100}, 100, lambda: 7, 2, 0.5)
    two, _ = choose(nodes, load, {"n4": 100}, 100, lambda: 7, 2, 0.5, None, TRIES)
    assert [n.name for n in full] == ["n4", "n3", "n1", "n2", "n0"]  # n4 within the guard
    assert two == full[:2]


def test_route_returns_the_two_the_relay_tries() -> None:
    router = Router(Routing(policy="prefix"), CortexMetrics())
    nodes = []
    for i, queued in enumerate((3, 0, 1, 2, 0)):
        node = Node(name=f"n{i}", base="", token=None)
        node.loads["m1"] = Load(running=queued, waiting=0, kv_cache_usage=0.0)
        node.queued_others["m1"] = queued
        nodes.append(node)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    ranked, hashes = router.route(nodes, "m1", "m1", "/v1/chat/completions", body, 0)
    assert hashes is not None and len(ranked) == TRIES
    assert {ranked[0].name, ranked[1].name} == {"n1", "n4"}  # the two least loaded (a tie)
