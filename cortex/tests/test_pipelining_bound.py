"""Per connection, at most one request is parsed ahead of the one being answered.

On caa7468 one read of 2,000 pipelined requests became 2,000 queued exchanges (an
unauthenticated client could make cortex hold gigabytes); now the rest stays unparsed bytes,
bounded, and reading pauses once they pass 64 KiB (issue 20, item 1).
"""

from __future__ import annotations

import asyncio

from http_wire import Echo, connect, settle

from cortex.http.exchange import HIGH_WATER

SLOW = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"


async def test_one_read_of_3000_pipelined_requests_queues_at_most_one() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(SLOW * 3000)
    await settle()
    assert conn.running is not None
    assert len(conn.waiting) <= 1
    assert len(conn.held) == len(SLOW) * (3000 - 1 - len(conn.waiting))
    assert len(conn.held) > HIGH_WATER and not wire.reading  # reading paused
    app.release.set()
    for _ in range(3000):
        await settle()
        if wire.out.count(b"HTTP/1.1 200 OK") == 3000:
            break
    assert wire.out.count(b"HTTP/1.1 200 OK") == 3000
    assert len(app.scopes) == 3000 and not conn.held and wire.reading


async def test_a_head_end_split_between_two_reads_still_stops_the_parsing() -> None:
    """``CRLF CRLF`` across two reads, at every split: never more than one request queued."""
    data = SLOW * 3
    for split in range(1, len(data)):
        app = Echo()
        conn, wire, _ = connect(app)
        conn.data_received(data[:split])
        conn.data_received(data[split:])
        await settle()
        assert len(conn.waiting) <= 1, split
        app.release.set()
        for _ in range(20):
            await settle()
        assert wire.out.count(b"HTTP/1.1 200 OK") == 3, split


async def test_pipelined_requests_with_bodies_are_answered_in_order_with_their_bodies() -> None:
    requests = b"".join(
        b"POST /direct HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        for body in (b"one\r\n\r\n", b"two", b"\r\n\r\nthree")
    )
    for split in range(1, len(requests)):
        app = Echo()
        conn, wire, _ = connect(app)
        conn.data_received(requests[:split])
        conn.data_received(requests[split:])
        for _ in range(5):
            await settle()
        out = wire.take()
        assert out.count(b"HTTP/1.1 200 OK") == 3, split
        assert out.index(b"one\r\n\r\n") < out.index(b"two") < out.index(b"\r\n\r\nthree")


async def test_a_client_answered_slowly_holds_no_more_than_one_request_ahead() -> None:
    """Requests arriving one read at a time while the first is answered: one queued, the
    rest held as bytes."""
    app = Echo()
    conn, _, _ = connect(app)
    for _ in range(500):
        conn.data_received(SLOW)
        await asyncio.sleep(0)
    assert len(conn.waiting) == 1
    assert len(conn.held) == len(SLOW) * 498


async def test_a_body_of_declared_length_is_fed_in_one_piece_whatever_it_holds() -> None:
    """A body made of ``CRLF CRLF`` is not cut at each one (a parser call per 4 bytes)."""
    app = Echo()
    conn, wire, _ = connect(app)
    calls = 0
    parser = conn.reader.parser

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(parser, name)

        def feed_data(self, data: bytes) -> None:
            nonlocal calls
            calls += 1
            parser.feed_data(data)

    conn.reader.parser = Counting()  # type: ignore[assignment]
    body = b"\r\n\r\n" * 16384  # 64 KiB
    data = b"POST /direct HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body) + SLOW
    for i in range(0, len(data), 16384):
        conn.data_received(data[i : i + 16384])
        await settle()
    for _ in range(5):
        await settle()
    assert calls <= 8, calls  # the head, the body's reads, the GET: not 16,384
    assert wire.out.count(b"HTTP/1.1 200 OK") == 1  # and the GET behind it is being answered
    assert conn.running is not None and conn.running.scope["path"] == "/slow"
