"""The limits a client cannot pass: head size, time to send a head, idle time, connections."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tracemalloc

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron
from http_wire import Echo, Wire, connect, settle


def error_of(out: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(out.partition(b"\r\n\r\n")[2])["error"]
    return error


async def test_a_header_that_never_ends_is_431_and_memory_stays_flat() -> None:
    """Unauthenticated: 20 MiB of one header value, fed as it would arrive."""
    conn, wire, _ = connect(Echo())
    tracemalloc.start()
    try:
        started = time.process_time()
        conn.data_received(b"GET / HTTP/1.1\r\nx-long: ")
        piece = b"a" * 65536
        for _ in range(320):
            conn.data_received(piece)
        cpu = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close\r\n" in out
    assert error_of(out)["message"] == "request line and headers exceed 65536 bytes"
    assert peak < 1 << 20  # well under the 20 MiB sent
    assert cpu < 1.0
    assert wire.eof  # the answer is out; the connection closes


async def test_a_header_value_over_the_field_limit_is_431() -> None:
    conn, wire, _ = connect(Echo(), max_header_field_bytes=1024)
    conn.data_received(b"GET / HTTP/1.1\r\nx-big: " + b"v" * 1025 + b"\r\n\r\n")
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 431 ")
    assert error_of(out)["message"] == "a header name or value exceeds 1024 bytes ('x-big')"
    assert error_of(out)["code"] == "header_too_large"


async def test_a_url_over_the_field_limit_is_431() -> None:
    conn, wire, _ = connect(Echo(), max_header_field_bytes=1024)
    conn.data_received(b"GET /" + b"u" * 1100 + b" HTTP/1.1\r\n\r\n")
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 431 ")
    assert error_of(out)["message"] == "the URL exceeds 1024 bytes"


async def test_many_headers_over_the_total_are_431() -> None:
    conn, wire, _ = connect(Echo(), max_header_bytes=4096)
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(50))
    conn.data_received(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert wire.take().startswith(b"HTTP/1.1 431 ")


async def test_a_head_just_under_the_limit_with_a_body_in_the_same_packet_is_served() -> None:
    conn, wire, _ = connect(Echo(), max_header_bytes=4096)
    head = b"POST /p HTTP/1.1\r\ncontent-length: 10000\r\nx-pad: "
    head += b"p" * (4096 - len(head) - 4) + b"\r\n\r\n"
    conn.data_received(head + b"b" * 10000)
    await settle()
    assert wire.take().startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_head_that_comes_too_slowly_is_408() -> None:
    conn, wire, _ = connect(Echo(), header_timeout=0.2)
    conn.data_received(b"GET / HTTP/1.1\r\nhost: slo")
    await asyncio.sleep(0.1)
    conn.data_received(b"w")  # a trickle does not extend the time
    await asyncio.sleep(0.2)
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert error_of(out)["code"] == "request_timeout"
    assert wire.eof


async def test_a_new_connection_that_sends_nothing_is_closed_quietly() -> None:
    _, wire, _ = connect(Echo(), header_timeout=0.1)
    await asyncio.sleep(0.2)
    assert wire.closed and wire.take() == b""


async def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_timeout() -> None:
    conn, wire, _ = connect(Echo(), header_timeout=0.1, keep_alive_timeout=0.4)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    assert wire.take().startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.2)  # past header_timeout: idle between requests is keep-alive
    assert not wire.closed
    await asyncio.sleep(0.3)
    assert wire.closed


async def test_connections_over_max_connections_get_503_and_it_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "cortex.http")
    first, wire, listener = connect(Echo(), max_connections=2)
    second = listener.protocol()
    wires = [Wire() for _ in range(4)]
    second.connection_made(wires[0])
    refused = [listener.protocol() for _ in range(3)]
    for conn, w in zip(refused, wires[1:], strict=True):
        w.protocol = conn
        conn.connection_made(w)
    for w in wires[1:]:
        out = w.take()
        assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 5\r\n" in out and b"connection: close\r\n" in out
        assert error_of(out)["code"] == "too_many_connections"
        assert w.eof
    full = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(full) == 1
    # The first connection is served as ever.
    first.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    assert wire.take().startswith(b"HTTP/1.1 200 ")


async def test_the_gateway_settings_set_the_limits_of_the_api_port() -> None:
    gateway = {"header_timeout": 0.3, "max_header_field_bytes": 1024}
    async with cortex(FakeNeuron("n1"), gateway=gateway) as c:
        port = c.client.base_url.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: slo")  # and no more
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nx-big: " + b"b" * 2000 + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_head_pipelined_in_the_same_read_as_a_body_is_bounded_too() -> None:
    app = Echo()
    conn, wire, _ = connect(app, max_header_bytes=1024)
    conn.data_received(b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nhel")
    await settle()
    big = b"GET /y HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    conn.data_received(b"lo" + big)
    await settle()
    out = wire.take()
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 1
    assert b"HTTP/1.1 431 " in out
    assert [scope["path"] for scope in app.scopes] == ["/x"]
