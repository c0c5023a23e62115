"""The ASGI side of cortex's server: failures of the app, disconnects, and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from http_wire import connect, settle
from starlette.applications import Starlette

from cortex.server import bind, serve


async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/late":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
    raise RuntimeError("the app broke")


@pytest.mark.logs_error("the app broke")
async def test_an_app_that_fails_before_answering_gets_its_client_a_500() -> None:
    conn, wire, _ = connect(failing)
    conn.data_received(b"GET /early HTTP/1.1\r\n\r\n")
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert json.loads(out.partition(b"\r\n\r\n")[2])["error"]["message"] == "internal error"
    assert b"the app broke" not in out  # no traceback for the client
    assert b"connection: close\r\n" in out


@pytest.mark.logs_error("the app broke")
async def test_an_app_that_fails_mid_answer_has_the_connection_cut() -> None:
    conn, wire, _ = connect(failing)
    conn.data_received(b"GET /late HTTP/1.1\r\n\r\n")
    await settle()
    assert wire.take().endswith(b"\r\n\r\n1\r\na\r\n")  # no end of the chunked body
    assert wire.closed


async def test_an_app_waiting_for_the_client_hears_that_it_left() -> None:
    heard: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        heard.append((await receive())["type"])
        heard.append((await receive())["type"])

    conn, _, _ = connect(app)
    conn.data_received(b"POST /x HTTP/1.1\r\ncontent-length: 4\r\n\r\nab")
    await settle()
    assert heard == ["http.request"]
    conn.connection_lost(None)
    await settle()
    assert heard == ["http.request", "http.disconnect"]


async def test_the_lifespan_runs_and_its_state_reaches_each_request() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"name": "cortex"}
        events.append("shutdown")

    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await Starlette(lifespan=lifespan)(scope, receive, send)
            return
        seen.append(scope["state"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sock = bind("127.0.0.1:0")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, sock, stop=stop, graceful=1, lifespan=True))
    port = sock.getsockname()[1]
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 204 ")
    writer.close()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert events == ["startup", "shutdown"]
    assert seen == [{"name": "cortex"}]


@pytest.mark.logs_error("the app's lifespan failed")
async def test_an_app_whose_startup_fails_is_not_served() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    with pytest.raises(RuntimeError, match=r"^the app did not start: RuntimeError: no database$"):
        await serve(
            Starlette(lifespan=lifespan),
            bind("127.0.0.1:0"),
            stop=asyncio.Event(),
            graceful=1,
            lifespan=True,
        )
