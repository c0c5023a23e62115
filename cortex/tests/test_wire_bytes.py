"""The relay's HTTP/1.1 client, byte for byte, on in-memory connections.

Exact bytes out; exact status, headers and body in, however the answer is cut into reads;
chunked edge cases; bytes after a complete answer; an answer cut off at every byte.
"""

from __future__ import annotations

import pytest

from cortex.upstream.memory import MemoryNeuron, Peer
from cortex.upstream.wire import Broken, Dropped, Upstream

BASE = "http://10.0.0.1:13131"

Parsed = tuple[int, list[tuple[bytes, bytes]], bytes]

ANSWERS: dict[str, tuple[bytes, Parsed]] = {
    "content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        b'{"a": "b"}\n',
        (
            200,
            [(b"content-type", b"application/json"), (b"content-length", b"11")],
            b'{"a": "b"}\n',
        ),
    ),
    "empty body": (
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        (404, [(b"content-length", b"0")], b""),
    ),
    "repeated headers": (
        b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\ncontent-length: 2\r\n\r\nok",
        (200, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"2")], b"ok"),
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
        (200, [(b"transfer-encoding", b"chunked")], b"hello world"),
    ),
    "chunked: upper-case hex, extensions, CRLF in the data, trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"A;name=value\r\n0123\r\n6789\r\n"
        b"00000003\r\nabc\r\n"
        b"0\r\nx-trailer: dropped\r\n\r\n",
        (200, [(b"transfer-encoding", b"chunked")], b"0123\r\n6789abc"),
    ),
    "an informational head first": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx",
        (201, [(b"content-length", b"1")], b"x"),
    ),
    "ended by the connection": (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\r\n\r\n",
        (200, [(b"content-type", b"text/event-stream")], b"data: 1\r\n\r\n"),
    ),
}


def serving(*pieces: bytes, hang_up: bool = False) -> MemoryNeuron:
    """A neuron that answers each request with ``pieces``, one read each."""

    async def handler(peer: Peer) -> None:
        while await peer.request():
            for piece in pieces:
                peer.send(piece)
            if hang_up:
                peer.hang_up()
                return

    return MemoryNeuron(handler)


async def fetch(neuron: MemoryNeuron) -> Parsed:
    client = Upstream(connect_timeout=1, idle_timeout=1, connector=neuron)
    try:
        answer = await client.post(BASE, "/v1/x", b"{}", [])
        return answer.status, answer.raw_headers, await answer.read()
    finally:
        client.close()
        await neuron.aclose()


async def test_the_request_is_exactly_these_bytes() -> None:
    neuron = serving(ANSWERS["empty body"][0])
    client = Upstream(connect_timeout=1, idle_timeout=1, connector=neuron)
    headers = [(b"x-a", b"1"), (b"x-a", b"2"), (b"authorization", b"Bearer t")]
    await (await client.post(BASE, "/v1/chat/completions", b'{"a":1}', headers)).read()
    assert bytes(neuron.peers[0].received) == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 10.0.0.1:13131\r\n"
        b"x-a: 1\r\nx-a: 2\r\nauthorization: Bearer t\r\nContent-Length: 7\r\n"
        b'X-Cortex-Request: 1\r\n\r\n{"a":1}'
    )
    client.close()


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_an_answer_parses_the_same_at_every_cut(name: str) -> None:
    raw, parsed = ANSWERS[name]
    close = name == "ended by the connection"
    assert await fetch(serving(raw, hang_up=close)) == parsed
    for cut in range(1, len(raw)):
        assert await fetch(serving(raw[:cut], raw[cut:], hang_up=close)) == parsed, cut
    assert await fetch(serving(*(raw[i : i + 1] for i in range(len(raw))), hang_up=close)) == parsed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\ncontent-length: 2\n\nhi", "not HTTP"),  # LF alone ends no line
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi", "not HTTP"),
        (b"SSH-2.0-OpenSSH\r\n", "not HTTP"),
    ],
    ids=["bare LF", "bad chunk size", "two lengths", "not HTTP at all"],
)
async def test_malformed_answers_are_broken(raw: bytes, message: str) -> None:
    with pytest.raises(Broken, match=message):
        await fetch(serving(raw, hang_up=True))


@pytest.mark.parametrize("name", ["content-length", "chunked"])
async def test_an_answer_cut_off_at_any_byte_is_broken_never_short(name: str) -> None:
    raw, _ = ANSWERS[name]
    for cut in range(len(raw)):
        with pytest.raises(Broken) as caught:
            await fetch(serving(raw[:cut], hang_up=True))
        if cut == 0:  # the request was delivered: broken, not "never sent"
            assert "without answering" in str(caught.value)


@pytest.mark.parametrize(
    "extra",
    [ANSWERS["content-length"][0], b"garbage", b"\r\nHTTP/1.1 200 OK\r\n"],
    ids=["a second answer", "garbage", "a part of an answer"],
)
async def test_bytes_after_a_complete_answer_retire_the_connection(extra: bytes) -> None:
    raw, parsed = ANSWERS["content-length"]
    neuron = serving(raw + extra)
    client = Upstream(connect_timeout=1, idle_timeout=1, connector=neuron)
    first = await client.post(BASE, "/v1/x", b"{}", [])
    assert (first.status, first.raw_headers, await first.read()) == parsed
    second = await client.post(BASE, "/v1/x", b"{}", [])
    assert (second.status, second.raw_headers, await second.read()) == parsed
    assert len(neuron.peers) == 2
    assert neuron.peers[0].closed_by_cortex.is_set()
    client.close()
    await neuron.aclose()


@pytest.mark.parametrize("extra", [b"", b"\r\n"], ids=["nothing", "an empty line"])
async def test_a_clean_answer_keeps_the_connection_for_the_next_request(extra: bytes) -> None:
    # An empty line between messages is no answer (HTTP/1.1 lets a parser skip it), so it
    # cannot be taken for anyone's: the connection is still good.
    raw, parsed = ANSWERS["chunked"]
    neuron = serving(raw + extra)
    client = Upstream(connect_timeout=1, idle_timeout=1, connector=neuron)
    for _ in range(3):
        answer = await client.post(BASE, "/v1/x", b"{}", [])
        assert (answer.status, answer.raw_headers, await answer.read()) == parsed
    assert len(neuron.peers) == 1
    assert bytes(neuron.peers[0].received).count(b"POST /v1/x HTTP/1.1\r\n") == 3
    client.close()
    await neuron.aclose()


async def test_a_reused_connection_closed_unanswered_is_not_sent_again() -> None:
    raw, parsed = ANSWERS["content-length"]

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(raw)
        await peer.request()
        peer.hang_up()  # it read the request: it may be running it

    neuron = MemoryNeuron(handler)
    client = Upstream(connect_timeout=1, idle_timeout=1, connector=neuron)
    answer = await client.post(BASE, "/v1/x", b"{}", [])
    assert (answer.status, answer.raw_headers, await answer.read()) == parsed
    with pytest.raises(Dropped):
        await client.post(BASE, "/v1/x", b"{}", [])
    assert len(neuron.peers) == 1
    assert bytes(neuron.peers[0].received).count(b"POST ") == 2  # each request once
    client.close()
    await neuron.aclose()


async def test_a_reused_connection_that_broke_mid_answer_is_not_sent_again() -> None:
    raw, _ = ANSWERS["content-length"]

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(raw)
        await peer.request()
        peer.send(raw[:20])
        peer.hang_up()

    neuron = MemoryNeuron(handler)
    client = Upstream(connect_timeout=1, idle_timeout=1, connector=neuron)
    await (await client.post(BASE, "/v1/x", b"{}", [])).read()
    with pytest.raises(Broken, match="mid-answer"):
        await client.post(BASE, "/v1/x", b"{}", [])
    assert len(neuron.peers) == 1
    client.close()
    await neuron.aclose()
