"""The relay's own HTTP client against scripted servers: the cases fake neurons do not reach."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from scripted import ok, read_request, scripted

from cortex.upstream.wire import (
    HIGH_WATER,
    Broken,
    ConnectFailed,
    ConnectTimeout,
    Dropped,
    ReadTimeout,
    Upstream,
)


async def test_a_kept_alive_connection_closed_after_reading_is_not_sent_again() -> None:
    connections = 0
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, requests
        connections += 1
        await read_request(reader)
        requests += 1
        writer.write(ok(b"one"))
        await writer.drain()
        # The next request on this connection is read and the connection closed unanswered:
        # the neuron has it and may be running it, so it must not go out a second time.
        await read_request(reader)
        requests += 1

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        first = await client.post(base, "/x", b"{}", [])
        assert await first.read() == b"one"
        with pytest.raises(Dropped):
            await client.post(base, "/x", b"{}", [])
        await asyncio.sleep(0.1)
        assert (connections, requests) == (1, 2)  # delivered once, never again
    client.close()


async def test_a_pooled_connection_seen_closed_is_replaced_unseen() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(ok(b"one"))
        await writer.drain()  # then closed: its keep-alive timeout, while cortex is idle

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        for _ in range(3):
            assert await (await client.post(base, "/x", b"{}", [])).read() == b"one"
            await asyncio.sleep(0.05)  # the close is seen before the next request
        assert connections == 3
    client.close()


async def test_a_connection_kept_alive_is_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):
            request = await read_request(reader)
            writer.write(ok(request.rsplit(b"\r\n\r\n", 1)[1]))

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        bodies = [await (await client.post(base, "/x", b"%d" % i, [])).read() for i in range(3)]
    assert bodies == [b"0", b"1", b"2"]
    assert connections == 1
    client.close()


async def test_the_request_carries_the_headers_and_the_body() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(ok(b""))

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        answer = await client.post(base, "/v1/chat", b'{"a": 1}', [(b"x-trace", b"t1")])
        assert answer.status == 200 and await answer.read() == b""
    request = seen[0]
    assert request.startswith(b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nx-trace: t1\r\n" in request and b"\r\nContent-Length: 8\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a": 1}')
    client.close()


async def test_an_answer_that_ends_with_its_connection_is_complete() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        answer = await client.post(base, "/x", b"{}", [])
        assert await answer.read() == b"all of it"
    client.close()


async def test_an_informational_head_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"the answer"))

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        answer = await client.post(base, "/x", b"{}", [])
        assert answer.status == 200
        assert await answer.read() == b"the answer"
    client.close()


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", Broken, "mid-answer"),
        (b"SMTP ready\r\n\r\n", Broken, "not HTTP"),
        (b"", Broken, "without answering"),
    ],
)
async def test_broken_answers(reply: bytes, error: type[Exception], message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        with pytest.raises(error, match=message):
            answer = await client.post(base, "/x", b"{}", [])
            await answer.read()
    client.close()


async def test_silence_is_a_read_timeout_for_the_head_and_between_chunks() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b"/head" not in request:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await reader.read()  # silent until the client hangs up

    client = Upstream(connect_timeout=1, idle_timeout=0.2)
    async with scripted(handler) as base:
        with pytest.raises(ReadTimeout):
            await client.post(base, "/head", b"{}", [])
        answer = await client.post(base, "/body", b"{}", [])
        pieces = answer.iter_any()
        assert await anext(pieces) == b"one"
        with pytest.raises(TimeoutError):
            await anext(pieces)
        answer.close()
    client.close()


async def test_connect_failures() -> None:
    client = Upstream(connect_timeout=0.2, idle_timeout=1)
    with pytest.raises(ConnectFailed, match="Connect call failed"):
        await client.post("http://127.0.0.1:9", "/x", b"{}", [])
    # A listener that never accepts, its queue full: Linux drops further SYNs, so the
    # connection is never made.
    with socket.socket() as deaf:
        deaf.bind(("127.0.0.1", 0))
        deaf.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(deaf.getsockname())
        try:
            port = deaf.getsockname()[1]
            with pytest.raises(ConnectTimeout, match=r"no connection within 0\.2s"):
                await client.post(f"http://127.0.0.1:{port}", "/x", b"{}", [])
        finally:
            for filler in fillers:
                filler.close()


async def test_a_slow_reader_pauses_the_neuron_instead_of_buffering_everything() -> None:
    sent = 0
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        with contextlib.suppress(ConnectionError):
            for _ in range(400):  # 6.4 MiB in all
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()  # blocks while the client does not read
                sent += len(chunk)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        done.set()

    client = Upstream(connect_timeout=1, idle_timeout=5)
    async with scripted(handler) as base:
        answer = await client.post(base, "/x", b"{}", [])
        pieces = answer.iter_any()
        first = await anext(pieces)
        await asyncio.sleep(0.5)  # the reader stalls; the server fills what it may
        # What the client holds is bounded: the high-water mark plus at most one socket read
        # (256 KiB on asyncio's loop); the kernel's socket buffers hold a few MiB more.
        assert answer._buffered <= HIGH_WATER + 256 * 1024
        assert sent < 400 * 16384
        total = len(first) + sum([len(piece) async for piece in pieces])
        assert total == 400 * 16384
        await asyncio.wait_for(done.wait(), 5)
    client.close()


class Pushed:
    """What a pushed answer handed on: its pieces, and how it ended (once)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.endings: list[BaseException | None] = []
        self.ended = asyncio.Event()

    def data(self, piece: bytes) -> None:
        self.pieces.append(piece)

    def end(self, error: BaseException | None) -> None:
        self.endings.append(error)
        self.ended.set()


async def test_a_pushed_answer_hands_on_each_piece_as_it_comes_and_ends_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
            for piece in (b"two", b"three"):
                await asyncio.sleep(0.05)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")

    client = Upstream(connect_timeout=1, idle_timeout=1)
    async with scripted(handler) as base:
        answer = await client.post(base, "/x", b"{}", [])
        await asyncio.sleep(0.02)  # "one" came with the head, before anyone asked for it
        pushed = Pushed()
        answer.push(pushed.data, pushed.end)
        assert pushed.pieces == [b"one"]  # handed on at once
        await asyncio.wait_for(pushed.ended.wait(), 5)
        assert pushed.pieces == [b"one", b"two", b"three"]
        await asyncio.sleep(0.1)
        assert pushed.endings == [None]
        # The connection went back to the pool: the next request reuses it.
        again = await client.post(base, "/x", b"{}", [])
        assert await again.read() == b"onetwothree"
        assert len(client._pools[base].idle) == 1
    client.close()


async def test_a_pushed_answer_times_out_when_silent_but_not_while_paused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await reader.read()  # silent until the client hangs up

    client = Upstream(connect_timeout=1, idle_timeout=0.2)
    async with scripted(handler) as base:
        answer = await client.post(base, "/x", b"{}", [])
        pushed = Pushed()
        answer.push(pushed.data, pushed.end)
        answer.pause()  # the client cannot keep up: the neuron's silence is not its fault
        await asyncio.sleep(0.6)
        assert pushed.endings == []
        answer.resume()
        await asyncio.sleep(0.1)
        assert pushed.endings == []
        await asyncio.wait_for(pushed.ended.wait(), 1)
        [error] = pushed.endings
        assert isinstance(error, ReadTimeout)
        assert str(error) == "nothing for 0.2s"
        assert not client._pools[base].idle  # a timed-out connection is not reused
    client.close()


async def test_a_pushed_answer_that_breaks_or_whose_receiver_fails_ends_with_the_error() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        if b"/dies" in request:
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return
        await reader.read()  # until cortex drops the connection
        closed.set()

    client = Upstream(connect_timeout=1, idle_timeout=5)
    async with scripted(handler) as base:
        answer = await client.post(base, "/dies", b"{}", [])
        pushed = Pushed()
        answer.push(pushed.data, pushed.end)
        await asyncio.wait_for(pushed.ended.wait(), 5)
        [error] = pushed.endings
        assert isinstance(error, Broken)
        assert pushed.pieces == [b"one"]

        answer = await client.post(base, "/fails", b"{}", [])
        fault = ValueError("the receiver's own fault")
        endings: list[BaseException | None] = []

        def data(piece: bytes) -> None:
            raise fault

        await asyncio.sleep(0.05)
        answer.push(data, endings.append)
        assert endings == [fault]
        await asyncio.wait_for(closed.wait(), 5)  # the connection was dropped, not pooled
    client.close()
