"""cortex's HTTP/1.1 server, byte for byte: framing, keep-alive, pipelining, split packets.

Modelled on uvicorn's ``tests/protocols/test_http.py``: bytes in, exact bytes out.
"""

from __future__ import annotations

import json

from http_wire import Echo, connect, settle

GET = b"GET /x HTTP/1.1\r\nhost: cortex\r\n\r\n"


def echoed(method: str, path: str, body: str = "") -> bytes:
    return json.dumps({"method": method, "path": path, "body": body}).encode()


def whole(body: bytes, *, close: bool = False, kind: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n" % kind
    head += b"content-length: %d\r\n" % len(body)
    if close:
        head += b"connection: close\r\n"
    return head + b"date: X\r\n\r\n" + body


async def test_a_whole_answer_has_its_length_and_date_and_the_connection_stays() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(GET)
    await settle()
    assert wire.take() == whole(echoed("GET", "/x"))
    assert not wire.closed and not wire.eof


async def test_a_direct_answer_has_a_date_too() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"POST /direct HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi")
    await settle()
    assert wire.take() == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"date: X\r\n\r\nhi"
    )


async def test_an_answer_of_unknown_length_is_chunked() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"GET /stream HTTP/1.1\r\n\r\n")
    await settle()
    assert wire.take() == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: X\r\n\r\n"
        b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    )


async def test_http_1_0_is_answered_and_closed() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"GET /x HTTP/1.0\r\n\r\n")
    await settle()
    assert wire.take() == whole(echoed("GET", "/x"), close=True)
    assert wire.eof  # half-closed: the client reads the answer, then closes


async def test_http_1_0_streams_end_with_the_connection() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"GET /stream HTTP/1.0\r\n\r\n")
    await settle()
    assert wire.take() == b"HTTP/1.1 200 OK\r\nconnection: close\r\ndate: X\r\n\r\nonetwo"
    assert wire.eof


async def test_connection_close_is_honoured() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"GET /x HTTP/1.1\r\nconnection: close\r\n\r\n")
    await settle()
    assert wire.take() == whole(echoed("GET", "/x"), close=True)
    assert wire.eof


async def test_head_answers_carry_no_body() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"HEAD /x HTTP/1.1\r\n\r\n")
    await settle()
    body = echoed("HEAD", "/x")
    assert wire.take() == whole(body)[: -len(body)]


async def test_pipelined_requests_are_answered_in_order() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(
        b"GET /slow HTTP/1.1\r\n\r\nPOST /a HTTP/1.1\r\ncontent-length: 1\r\n\r\nx"
        b"POST /direct HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi"
    )
    await settle()
    assert wire.take() == b""  # the first holds the others back
    app.release.set()
    await settle()
    out = wire.take()
    first = out.index(echoed("GET", "/slow"))
    second = out.index(echoed("POST", "/a", "x"))
    assert first < second < out.index(b"\r\n\r\nhi")


async def test_a_request_split_into_single_bytes_is_read_whole() -> None:
    conn, wire, _ = connect(Echo())
    request = b"POST /split HTTP/1.1\r\nhost: cortex\r\ncontent-length: 5\r\n\r\nhello"
    for i in range(len(request)):
        conn.data_received(request[i : i + 1])
    await settle()
    assert wire.take() == whole(echoed("POST", "/split", "hello"))


async def test_a_chunked_request_body_is_read_whole() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(
        b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    await settle()
    assert wire.take() == whole(echoed("POST", "/c", "abcde"))


async def test_expect_100_continue_is_answered_when_the_body_is_read() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(
        b"POST /direct HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    )
    await settle()
    assert wire.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"hi")
    await settle()
    assert wire.take().endswith(b"\r\n\r\nhi")


async def test_duplicate_headers_reach_the_app_as_separate_entries() -> None:
    app = Echo()
    conn, _, _ = connect(app)
    conn.data_received(b"GET /x HTTP/1.1\r\nX-Tag: a\r\nx-tag: b\r\n\r\n")
    await settle()
    assert [v for n, v in app.scopes[0]["headers"] if n == b"x-tag"] == [b"a", b"b"]


async def test_an_h2c_upgrade_offer_is_declined_and_its_body_kept() -> None:
    """``curl --http2`` on plain HTTP offers an upgrade; the answer comes over HTTP/1.1."""
    conn, wire, _ = connect(Echo())
    conn.data_received(
        b"POST /up HTTP/1.1\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
        b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\ncontent-length: 5\r\n\r\nhello" + GET
    )
    await settle()
    out = wire.take()
    assert out.startswith(whole(echoed("POST", "/up", "hello")))
    assert out.endswith(echoed("GET", "/x"))  # and the connection goes on as HTTP/1.1


async def test_a_malformed_request_pipelined_behind_good_ones_is_answered_after_them() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(
        b"GET /slow HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\nGET / HTTP/9\r\n\r\n"
    )
    await settle()
    app.release.set()
    await settle()
    out = wire.take()
    assert out.index(echoed("GET", "/slow")) < out.index(echoed("GET", "/second"))
    assert out.index(echoed("GET", "/second")) < out.index(b"HTTP/1.1 400 Bad Request\r\n")
    assert wire.eof


async def test_a_malformed_request_is_400_and_closed() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
    await settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close\r\n" in out and b"date: X\r\n" in out
    assert json.loads(out.partition(b"\r\n\r\n")[2])["error"]["type"] == "invalid_request_error"
    assert wire.eof


async def test_an_absolute_form_target_without_a_path_is_the_root() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(b"GET http://cortex HTTP/1.1\r\nhost: cortex\r\n\r\n")
    await settle()
    assert wire.take() == whole(echoed("GET", "/"))
