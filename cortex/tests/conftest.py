"""Checks that hold in every cortex test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from logged_errors import raised_in_cortex

from cortex.fleet.state import Fleet, Node

WATCHED = ("cortex.http", "cortex.upstream")
"""Loggers whose ERROR records fail a test: an ERROR there is a bug of cortex's own."""


@pytest.fixture(autouse=True)
def no_errors_logged(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail a test in which ``cortex.http`` or ``cortex.upstream`` logged an ERROR (or the
    event loop logged an exception raised in cortex's code).

    Those loggers say ERROR only for a bug of cortex's own (an exception out of a protocol
    callback or an app), which a test may otherwise pass right through: the connection is
    closed or a 500 written, and a test that does not look at the log sees nothing wrong. A
    test that provokes one on purpose says so: ``@pytest.mark.logs_error("text")``.
    """
    allowed = [str(marker.args[0]) for marker in request.node.iter_markers("logs_error")]
    yield
    errors = [
        record
        for when in ("setup", "call")
        for record in caplog.get_records(when)  # type: ignore[arg-type]
        if record.levelno >= logging.ERROR
        and (record.name.startswith(WATCHED) or raised_in_cortex(record))
        and not any(text in _said(record) for text in allowed)
    ]
    if errors:
        pytest.fail(
            "cortex logged an ERROR: " + "; ".join(f"{r.name}: {_said(r)}" for r in errors),
            pytrace=False,
        )


def _said(record: logging.LogRecord) -> str:
    """A record's message and the exception it carries, if any."""
    exc = record.exc_info[1] if record.exc_info else None
    return record.getMessage() if exc is None else f"{record.getMessage()}: {exc}"


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
