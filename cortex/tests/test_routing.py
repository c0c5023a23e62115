"""Routing policy as a pure function: lowest load score first (the engines' waiting + running
at the last poll, plus this cortex's requests sent since, less those finished since, then KV
use), ties take turns; by this cortex's requests in flight when a neuron reports no load."""

from __future__ import annotations

from typing import Any

from cortex.fleet.routing import rank
from cortex.fleet.state import Load, Node


def nodes(*in_flight: int) -> list[Node]:
    return [Node(name=f"n{i}", base="", token=None, in_flight=n) for i, n in enumerate(in_flight)]


def loaded(*loads: tuple[int, int, float | None, int, int]) -> list[Node]:
    """Nodes whose engines reported ``(running, waiting, kv)`` for m1 at the last poll, when
    this cortex had ``then`` requests in flight there; it has ``now`` in flight now."""
    out = []
    for i, (running, waiting, kv, then, now) in enumerate(loads):
        node = Node(name=f"n{i}", base="", token=None)
        node.loads["m1"] = Load(running, waiting, kv)
        node.queued_others["m1"] = running + waiting - then
        node.model_in_flight["m1"] = now
        out.append(node)
    return out


def names(ranked: list[Node]) -> list[str]:
    return [n.name for n in ranked]


def test_least_busy_first() -> None:
    assert names(rank(nodes(3, 0, 1), "m1")) == ["n1", "n2", "n0"]


def test_ties_rotate_with_the_turn() -> None:
    fleet = nodes(0, 0, 0)
    firsts = [rank(fleet, "m1", turn)[0].name for turn in range(6)]
    assert firsts == ["n0", "n1", "n2", "n0", "n1", "n2"]


def test_nothing_to_rank() -> None:
    assert rank([], "m1") == []


def test_the_engines_load_ranks_before_this_cortexs_in_flight() -> None:
    fleet = loaded((4, 3, 0.5, 0, 0), (2, 0, 0.9, 0, 1), (0, 5, 0.1, 0, 0))
    fleet[1].in_flight = 50  # ours in flight no longer decides when every engine reports
    assert names(rank(fleet, "m1")) == ["n1", "n2", "n0"]  # scores 3, 5, 7


def test_this_cortexs_requests_since_the_poll_count() -> None:
    fleet = loaded((1, 0, 0.0, 0, 0), (0, 0, 0.0, 0, 3))
    assert names(rank(fleet, "m1")) == ["n0", "n1"]  # 1 against 0 + 3 sent since
    fleet = loaded((1, 0, 0.0, 0, 0), (4, 0, 0.0, 4, 0))
    assert names(rank(fleet, "m1")) == ["n1", "n0"]  # 1 against 4 - 4 finished since


def test_ties_go_to_the_emptier_kv_cache_then_take_turns() -> None:
    fleet = loaded((2, 0, 0.8, 0, 0), (1, 0, 0.3, 0, 1), (2, 0, 0.3, 0, 0))
    assert [rank(fleet, "m1", t)[0].name for t in range(3)] == ["n1", "n1", "n2"]
    fleet = loaded((1, 1, None, 0, 0), (2, 0, None, 0, 0))
    assert [rank(fleet, "m1", t)[0].name for t in range(4)] == ["n0", "n1", "n0", "n1"]


def test_a_neuron_without_load_numbers_means_the_in_flight_rule() -> None:
    fleet = loaded((9, 9, 1.0, 0, 0), (0, 0, 0.0, 0, 0))
    fleet[0].in_flight, fleet[1].in_flight = 0, 2
    fleet[1].loads.clear()  # this one reports none (an older neuron)
    assert names(rank(fleet, "m1")) == ["n0", "n1"]


def test_load_is_read_from_model_info_tolerantly() -> None:
    cases: list[tuple[dict[str, Any], Load]] = [
        ({"running": 2, "waiting": 1, "kv_cache_usage": 0.25}, Load(2, 1, 0.25)),
        ({}, Load()),
        ({"running": None, "waiting": None, "kv_cache_usage": None}, Load()),
        ({"running": "2", "waiting": -1, "kv_cache_usage": 1.5}, Load()),
        ({"running": True, "waiting": 2.5, "kv_cache_usage": "x"}, Load()),
        ({"running": 0, "waiting": 0, "kv_cache_usage": 1}, Load(0, 0, 1.0)),
    ]
    for info, want in cases:
        assert Load.of(info) == want, info
    assert Load(2, None, 0.1).queued is None
