"""Routing policy as a pure function: least busy first, ties take turns."""

from __future__ import annotations

from cortex.fleet.routing import rank
from cortex.fleet.state import Node


def nodes(*in_flight: int) -> list[Node]:
    return [Node(name=f"n{i}", base="", token=None, in_flight=n) for i, n in enumerate(in_flight)]


def test_least_busy_first() -> None:
    assert [n.name for n in rank(nodes(3, 0, 1))] == ["n1", "n2", "n0"]


def test_ties_rotate_with_the_turn() -> None:
    fleet = nodes(0, 0, 0)
    firsts = [rank(fleet, turn)[0].name for turn in range(6)]
    assert firsts == ["n0", "n1", "n2", "n0", "n1", "n2"]


def test_nothing_to_rank() -> None:
    assert rank([]) == []
