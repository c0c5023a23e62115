"""Checks that hold in every cortex test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cortex.fleet.state import Fleet, Node


@pytest.fixture(autouse=True)
def routing_views_are_never_stale(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every answer routing gets from the fleet's kept views equals a scan of the nodes now.

    The views are rebuilt only when something calls ``Fleet.changed``: a change to a node
    that forgets to would route on a stale fleet, and this makes the test that does it fail.
    """
    ready_nodes, knows = Fleet.ready_nodes, Fleet.knows

    def checked_ready_nodes(fleet: Fleet, model: str) -> list[Node]:
        kept = ready_nodes(fleet, model)
        assert kept == fleet.scan(model), f"stale routing view of {model!r}"
        return kept

    def checked_knows(fleet: Fleet, model: str) -> bool:
        kept = knows(fleet, model)
        fresh = fleet.entry(model) is not None or model in fleet.reported()
        assert kept == fresh, f"stale view of whether {model!r} is known"
        return kept

    monkeypatch.setattr(Fleet, "ready_nodes", checked_ready_nodes)
    monkeypatch.setattr(Fleet, "knows", checked_knows)
    yield
