"""The server's structure holds what it promises (issue 20): a bug of cortex's own is never
swallowed by a protocol callback, and the modules of ``cortex.http`` import one another in
one direction only.

On caa7468 ``data_received`` caught every exception: a bug injected into the parser's feed
failed none of the protocol tests, and seven modules formed an import cycle (through
``TYPE_CHECKING`` imports and mixins tied by ``cast("Connection", self)``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from http_wire import Echo, connect, settle

import cortex.http
from cortex.http.reader import RequestReader

HTTP = Path(cortex.http.__file__).parent


class Injected(Exception):
    """The bug a test plants."""


async def test_a_bug_in_the_reader_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: RequestReader, data: bytes) -> None:
        raise Injected

    conn, _, _ = connect(Echo())
    monkeypatch.setattr(RequestReader, "feed", broken)
    with pytest.raises(Injected):  # (asyncio logs it and closes the connection)
        conn.data_received(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.logs_error("error parsing a request")
async def test_a_bug_in_a_parser_callback_is_a_400_and_an_error_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Echo()
    conn, wire, listener = connect(app)

    def broken(*args: object) -> None:
        raise Injected

    listener.dispatch = broken  # type: ignore[assignment]
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    assert wire.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert any(
        r.levelname == "ERROR" and r.name == "cortex.http" and r.exc_info for r in caplog.records
    )


def _imports(module: Path) -> set[str]:
    """The ``cortex.http`` modules ``module`` imports, under ``TYPE_CHECKING`` or not."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cortex.http."):
            found.add(str(node.module).removeprefix("cortex.http."))
    return found


def test_the_modules_of_cortex_http_form_no_import_cycle() -> None:
    graph = {path.stem: _imports(path) for path in HTTP.glob("*.py")}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' → '.join((*path, name))}"
        if name in done:
            return
        for imported in graph.get(name, ()):
            visit(imported, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    assert "reader" in graph and "connection" in graph["listener"]
