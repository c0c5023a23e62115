"""A request body has ``body_timeout`` seconds to arrive once its head has (issue 20, item 7).

On caa7468 nothing bounded a body's time: 500 bodies trickled a byte per 25 s held every
connection slot for as long as the client liked. Now the trickler gets 408 and the
connection closes once ``body_timeout`` has passed, whatever it still sends.
"""

from __future__ import annotations

import asyncio
import time

from http_wire import Echo, connect, settle

HEAD = b"POST /direct HTTP/1.1\r\ncontent-length: 10\r\n\r\n"


async def test_a_trickled_body_is_answered_408_when_body_timeout_runs_out() -> None:
    conn, wire, listener = connect(Echo(), body_timeout=0.3)
    began = time.monotonic()
    conn.data_received(HEAD + b"a")
    closed_at = None
    for _ in range(20):  # a byte every 50 ms: never idle, never done in time
        await asyncio.sleep(0.05)
        if wire.eof or wire.closed:
            closed_at = time.monotonic() - began
            break
        conn.data_received(b"b")
    assert closed_at is not None and 0.3 <= closed_at < 0.5, closed_at
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out
    assert b"connection: close\r\n" in out and b"request_timeout" in out
    assert listener.budget.used == 0


async def test_a_body_sent_in_pieces_within_body_timeout_is_answered() -> None:
    conn, wire, _ = connect(Echo(), body_timeout=0.5)
    conn.data_received(HEAD)
    for piece in (b"01234", b"56789"):
        await asyncio.sleep(0.1)
        conn.data_received(piece)
    await settle()
    assert wire.take().endswith(b"\r\n\r\n0123456789")
    await asyncio.sleep(0.6)  # the clock stopped with the body: nothing more comes
    assert wire.take() == b"" and not wire.closed


async def test_the_clock_is_per_body_on_a_kept_alive_connection() -> None:
    conn, wire, _ = connect(Echo(), body_timeout=0.3)
    for _ in range(3):
        conn.data_received(HEAD + b"01234")
        await asyncio.sleep(0.2)
        conn.data_received(b"56789")
        await settle()
    assert wire.take().count(b"HTTP/1.1 200 OK") == 3 and not wire.closed
