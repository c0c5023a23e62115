"""Trailers on a request are refused: they never join the headers the app already has."""

from __future__ import annotations

import json
import tracemalloc

from http_wire import Echo, connect, settle

CHUNKED = b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"


def error_of(out: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(out.partition(b"\r\n\r\n")[2])["error"]
    return error


async def test_a_trailer_is_400_and_never_reaches_the_app() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(CHUNKED + b"authorization: Bearer injected\r\n\r\n")
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close\r\n" in out
    assert error_of(out)["message"] == "a request may not carry trailers"
    assert all(name != b"authorization" for scope in app.scopes for name, _ in scope["headers"])
    assert wire.eof


async def test_a_trailer_on_a_direct_request_is_400_too() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(CHUNKED.replace(b"/x", b"/direct") + b"x-t: 1\r\n\r\n")
    await settle()
    assert wire.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_a_trailer_that_never_ends_is_refused_and_memory_stays_flat() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(CHUNKED + b"x-t: ")
    tracemalloc.start()
    try:
        for _ in range(320):  # 20 MiB of one trailer value
            conn.data_received(b"a" * 65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert peak < 1 << 20


async def test_a_chunked_body_without_trailers_is_still_answered() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(CHUNKED)
    conn.data_received(b"\r\nGET /y HTTP/1.1\r\n\r\n")
    await settle()
    out = wire.take()
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b'"body": "hello"' in out
