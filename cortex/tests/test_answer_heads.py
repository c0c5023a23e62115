"""Answer heads are checked as they are written: no CR or LF inside a header name or value,
never two ``Content-Length`` (issue 20). A head that fails is never sent: the app's bug
becomes a 500 (or a cut connection), logged, and the next request is served.

On caa7468 a header value with ``\\r\\n`` in it went out as two headers (a header injected
into the answer), and two ``Content-Length`` went out as given.
"""

from __future__ import annotations

from typing import Any

import pytest
from http_wire import connect, settle
from starlette.responses import Response

from cortex.http.exchange import Exchange
from cortex.http.head import InvalidHead

GET = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"
POST = b"POST /direct HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi"


class Heads:
    """An ASGI app answering with the headers it is given; a direct path that does too."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.direct = self.Direct(headers)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"ok"})

    class Direct:
        paths = frozenset({"/direct"})

        def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
            self.headers = headers

        async def __call__(self, scope: dict[str, Any], read: Any) -> Response:
            await read(100)
            response = Response(b"ok")
            response.raw_headers += self.headers
            return response

        def cut(self, scope: dict[str, Any]) -> bytes:
            return b""


INJECTED = [
    [(b"x-a", b"1\r\nset-cookie: stolen=1")],
    [(b"x-a", b"1\nset-cookie: stolen=1")],
    [(b"x-a", b"1\rset-cookie: stolen=1")],
    [(b"x-a\r\nset-cookie", b"stolen=1")],
]


@pytest.mark.logs_error("holds a CR or LF")
@pytest.mark.parametrize("headers", INJECTED)
@pytest.mark.parametrize("request_bytes", [GET, POST], ids=["asgi", "direct"])
async def test_a_header_with_cr_or_lf_is_never_written(
    headers: list[tuple[bytes, bytes]], request_bytes: bytes
) -> None:
    conn, wire, _ = connect(Heads(headers))
    conn.data_received(request_bytes)
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), out
    assert b"stolen" not in out
    assert out.count(b"\n") == out.count(b"\r\n")


@pytest.mark.logs_error("Content-Length headers")
@pytest.mark.parametrize("request_bytes", [GET, POST], ids=["asgi", "direct"])
async def test_two_content_lengths_are_never_written(request_bytes: bytes) -> None:
    headers = [(b"content-length", b"2"), (b"content-length", b"2")]
    if request_bytes == POST:
        headers = headers[1:]  # Starlette's own is the first
    conn, wire, _ = connect(Heads(headers))
    conn.data_received(request_bytes)
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), out
    assert out.count(b"content-length:") == 1


@pytest.mark.parametrize("request_bytes", [GET, POST], ids=["asgi", "direct"])
async def test_a_clean_head_has_exactly_one_content_length(request_bytes: bytes) -> None:
    conn, wire, _ = connect(Heads([(b"x-a", b"1")]))
    conn.data_received(request_bytes + request_bytes)
    for _ in range(3):
        await settle()
    out = wire.take()
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2, out
    assert out.count(b"content-length: 2\r\n") == 2 and out.count(b"content-length") == 2
    assert out.count(b"\n") == out.count(b"\r\n")


def test_the_writer_itself_refuses_and_changes_nothing() -> None:
    exchange = Exchange.__new__(Exchange)
    exchange.keep_alive, exchange.body_done, exchange.started = True, True, False
    exchange.expect_continue = False
    with pytest.raises(InvalidHead):
        exchange.head(200, [(b"x", b"a\r\nb: c")])
    with pytest.raises(InvalidHead):
        exchange.head(200, [(b"content-length", b"1")], b"content-length: 1\r\n")
    assert not exchange.started and exchange.keep_alive
    head = exchange.head(204, [(b"x", b"a")])
    assert head.startswith(b"HTTP/1.1 204 No Content\r\nx: a\r\ndate: ") and exchange.started
