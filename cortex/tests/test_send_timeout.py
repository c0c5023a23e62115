"""A client that stops reading its answers is cut off after ``send_timeout`` seconds.

Its answer stays unsent in cortex (the socket full) and, without a bound, would hold the
connection, the request being answered and a place under ``max_connections`` for ever.
"""

from __future__ import annotations

import asyncio

from http_wire import Echo, connect, settle

GET = b"GET /x HTTP/1.1\r\nhost: cortex\r\n\r\n"


async def test_an_answer_the_client_does_not_take_is_cut_after_send_timeout() -> None:
    app = Echo()
    conn, wire, listener = connect(app, send_timeout=0.2)
    conn.pause_writing()  # the client's socket is full
    conn.data_received(b"GET /stream HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.1)
    assert not wire.closed
    await asyncio.sleep(0.2)
    assert wire.aborted  # a close would wait for the unsent bytes
    await settle()
    assert conn.running is None or conn.running.gone
    assert conn not in listener.connections


async def test_a_client_that_takes_its_answer_in_time_keeps_its_connection() -> None:
    conn, wire, _ = connect(Echo(), send_timeout=0.2)
    conn.pause_writing()
    conn.data_received(b"GET /stream HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.1)
    conn.resume_writing()
    await settle()
    await asyncio.sleep(0.2)
    assert not wire.closed
    assert wire.take().endswith(b"0\r\n\r\n")


async def test_hundreds_of_pipelined_requests_never_read_are_cut() -> None:
    conn, wire, listener = connect(Echo(), send_timeout=0.2)
    conn.data_received(GET)
    await settle()
    conn.pause_writing()
    for _ in range(300):
        conn.data_received(GET)
        await settle()
    await asyncio.sleep(0.3)
    assert wire.aborted
    await settle()
    assert conn not in listener.connections


async def test_a_timed_out_connection_with_bytes_unsent_is_aborted_after_send_timeout() -> None:
    conn, wire, listener = connect(Echo(), keep_alive_timeout=0.05, send_timeout=0.2)
    conn.data_received(GET)
    await settle()
    wire.buffered = 100  # the answer is not all out, and the client takes no more
    await asyncio.sleep(0.1)
    assert wire.closed and not wire.aborted  # closing: still counted
    assert conn in listener.connections
    await asyncio.sleep(0.2)
    assert wire.aborted
    await settle()
    assert conn not in listener.connections
