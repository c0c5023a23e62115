"""A chunked body that breaks off mid-request gets a 400 and a close, never a hang.

The request it belongs to is waiting for the rest of that body, which cannot come: the
refusal is that request's answer, on the direct path and through ASGI alike.
"""

from __future__ import annotations

import pytest
from http_wire import Echo, connect, settle

BROKEN = [
    b"ZZZ\r\nabc\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"FFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n",  # a chunk size that overflows
    b"5\r\nhelloXX0\r\n\r\n",  # chunk data not ended by CRLF
]


@pytest.mark.parametrize("path", [b"/direct", b"/asgi"])
@pytest.mark.parametrize("body", BROKEN)
async def test_a_broken_chunked_body_is_refused_and_closed(path: bytes, body: bytes) -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(b"POST " + path + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    await settle()
    conn.data_received(body)
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert b"invalid HTTP request" in out
    assert wire.eof or wire.closed  # the connection is being closed, not left waiting
    conn.connection_lost(None)
    await settle()


async def test_a_broken_body_behind_a_running_request_waits_its_turn() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(b"POST /direct-slow HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    await settle()
    conn.data_received(b"POST /direct HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n")
    await settle()
    assert wire.take() == b""  # the first request is still being answered
    app.direct.release.set()
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert out.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 400 " in out
    assert wire.eof or wire.closed
    conn.connection_lost(None)
    await settle()
