"""What one neuron answer may cost cortex (issue 20, items 2, 3 and 4), byte for byte.

Each limit of :class:`cortex.upstream.wire.Limits` fails that request with
:class:`OverLimit`, closes that connection, and keeps nothing of the answer: the memory
is back at once, without a garbage collection.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from cortex.upstream.memory import MemoryNeuron, Peer
from cortex.upstream.wire import Crossed, Limits, OverLimit, Upstream

BASE = "http://10.0.0.1:13131"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
MIB = 1024 * 1024


def client(neuron: MemoryNeuron, strays: list[str] | None = None, **limits: float) -> Upstream:
    return Upstream(
        connect_timeout=1,
        idle_timeout=30,
        connector=neuron,
        limits=Limits(**limits),  # type: ignore[arg-type]
        stray=(strays if strays is not None else []).append,
    )


def sending(pieces: Iterator[bytes], gap: float = 0.0) -> MemoryNeuron:
    """A neuron that answers the first request with ``pieces`` until cortex hangs up."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        for piece in pieces:
            if peer.closed_by_cortex.is_set():
                return
            peer.send(piece)
            await asyncio.sleep(gap)

    return MemoryNeuron(handler)


def forever(piece: bytes, first: bytes = HEAD) -> Iterator[bytes]:
    yield first
    while True:
        yield piece


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Memory must come back by reference counting alone (a cycle would keep it)."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        gc.enable()


async def fails(neuron: MemoryNeuron, up: Upstream, whole: bool = False) -> str:
    try:
        with pytest.raises(OverLimit) as caught:
            answer = await up.post(BASE, "/v1/x", b"{}", [])
            if whole:
                await answer.read()
        await asyncio.sleep(0.01)
        assert neuron.peers[0].closed_by_cortex.is_set()  # that connection is closed
        return str(caught.value)
    finally:
        up.close()
        await neuron.aclose()


@pytest.mark.usefixtures("no_gc")
async def test_endless_header_lines_stop_at_the_head_limit_and_nothing_is_kept() -> None:
    before = tracemalloc.get_traced_memory()[0]
    neuron = sending(forever(b"x-junk: " + b"j" * 1000 + b"\r\n"))
    message = await fails(neuron, client(neuron, head_bytes=4 * MIB, headers=10**6))
    assert "head is over 4194304 bytes" in message
    kept = tracemalloc.get_traced_memory()[0] - before
    assert kept < 512 * 1024, f"{kept} bytes kept after the answer failed"


@pytest.mark.usefixtures("no_gc")
async def test_one_endless_header_value_stops_at_the_head_limit() -> None:
    before = tracemalloc.get_traced_memory()[0]
    neuron = sending(forever(b"v" * 65536, HEAD + b"x-long: "))
    assert "head is over 1048576" in await fails(neuron, client(neuron, head_bytes=MIB))
    kept = tracemalloc.get_traced_memory()[0] - before
    assert kept < 512 * 1024, f"{kept} bytes kept after the answer failed"


async def test_too_many_headers() -> None:
    neuron = sending(forever(b"x-a: 1\r\n"))
    assert "over 100 headers" in await fails(neuron, client(neuron))


async def test_a_head_that_trickles_fails_at_the_head_timeout() -> None:
    neuron = sending(forever(b"x-a: 1\r\n"), gap=0.05)
    started = time.monotonic()
    assert "head took over 0.5s" in await fails(neuron, client(neuron, head_timeout=0.5))
    assert 0.4 < time.monotonic() - started < 1.5


@pytest.mark.usefixtures("no_gc")
async def test_a_whole_answer_over_the_limit_fails_and_nothing_is_kept() -> None:
    before = tracemalloc.get_traced_memory()[0]
    pieces = forever(b"a" * 65536, HEAD + b"transfer-encoding: chunked\r\n\r\n")
    neuron = sending(b"%x\r\n%s\r\n" % (len(p), p) if i else p for i, p in enumerate(pieces))
    message = await fails(neuron, client(neuron, answer_bytes=8 * MIB), whole=True)
    assert "over 8388608 bytes" in message
    kept = tracemalloc.get_traced_memory()[0] - before
    assert kept < 512 * 1024, f"{kept} bytes kept after the answer failed"


async def test_a_declared_length_over_the_limit_fails_before_the_body() -> None:
    neuron = sending(iter([HEAD + b"content-length: 1500000000\r\n\r\n{"]))
    message = await fails(neuron, client(neuron, answer_bytes=64 * MIB), whole=True)
    assert "1500000000 bytes, over 67108864" in message


async def test_a_whole_answer_that_trickles_fails_at_the_answer_timeout() -> None:
    neuron = sending(forever(b"a", HEAD + b"content-length: 100000\r\n\r\n"), gap=0.05)
    started = time.monotonic()
    message = await fails(neuron, client(neuron, answer_timeout=0.5), whole=True)
    assert "took over 0.5s" in message
    assert 0.4 < time.monotonic() - started < 1.5


def answering(*answers: bytes) -> MemoryNeuron:
    """Each request gets the next of ``answers`` (a neuron's late answers included)."""
    queue = list(answers)

    async def handler(peer: Peer) -> None:
        while queue and await peer.request():
            peer.send(queue.pop(0))

    return MemoryNeuron(handler)


def whole(body: bytes, echo: bytes) -> bytes:
    return HEAD + b"x-cortex-request: %s\r\ncontent-length: %d\r\n\r\n%s" % (echo, len(body), body)


@pytest.mark.parametrize("cut", [None, 10, 120])
async def test_a_late_answer_to_an_earlier_request_is_skipped(cut: int | None) -> None:
    # The neuron answers the second request with a late copy of the first answer, then the
    # right one: by position the copy is the second's, by its echo it is not.
    strays: list[str] = []
    second = whole(b"one", b"1") + whole(b"two", b"2")
    pieces = [second] if cut is None else [second[:cut], second[cut:]]

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(whole(b"one", b"1"))
        await peer.request()
        for piece in pieces:
            peer.send(piece)
            await asyncio.sleep(0.01)

    neuron = MemoryNeuron(handler)
    up = client(neuron, strays)
    assert await (await up.post(BASE, "/v1/x", b"{}", [])).read() == b"one"
    answer = await up.post(BASE, "/v1/x", b"{}", [])
    assert (answer.status, await answer.read()) == (200, b"two")
    assert (b"x-cortex-request", b"2") in answer.raw_headers
    assert strays == ["late"]
    await asyncio.sleep(0.01)
    assert neuron.peers[0].closed_by_cortex.is_set()  # and that connection is not reused
    up.close()
    await neuron.aclose()


async def test_an_answer_echoing_a_request_never_sent_is_refused() -> None:
    strays: list[str] = []
    neuron = answering(whole(b"one", b"7"))
    up = client(neuron, strays)
    with pytest.raises(Crossed):
        await up.post(BASE, "/v1/x", b"{}", [])
    assert strays == ["crossed"]
    await asyncio.sleep(0.01)
    assert neuron.peers[0].closed_by_cortex.is_set()
    up.close()
    await neuron.aclose()


async def test_bytes_on_an_idle_connection_close_it_and_are_counted() -> None:
    strays: list[str] = []

    async def handler(peer: Peer) -> None:
        while await peer.request():
            peer.send(whole(b"one", b"%d" % peer.received.count(b"POST ")))
            await asyncio.sleep(0.02)
            peer.send(b"HTTP/1.1 200 OK\r\n")  # late, while cortex's side is idle

    neuron = MemoryNeuron(handler)
    up = client(neuron, strays)
    for _ in range(2):
        assert await (await up.post(BASE, "/v1/x", b"{}", [])).read() == b"one"
        await asyncio.sleep(0.05)
    assert strays == ["idle", "idle"]
    assert len(neuron.peers) == 2  # the first was closed: the second request went fresh
    assert neuron.peers[0].closed_by_cortex.is_set()
    up.close()
    await neuron.aclose()
