"""Inference POSTs on cortex's own server skip ASGI: the HTTP/1.1 details it must still get right.

Every other gateway test goes through this path too (they all use ``cortex.server``); these
cover what only shows on the wire: HTTP/1.0, pipelining, ``Expect: 100-continue``, a chunked
body over the limit, a client that leaves before a whole answer, and the ASGI way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

import httpx
from cortex_testing import cortex
from fake_neuron import FakeNeuron

from cortex.app import create_app

CHAT = "/v1/chat/completions"


def post(body: bytes, *, version: str = "1.1", extra: bytes = b"") -> bytes:
    head = f"POST {CHAT} HTTP/{version}\r\nhost: cortex\r\ncontent-type: application/json\r\n"
    return head.encode() + extra + b"content-length: %d\r\n\r\n" % len(body) + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer with a Content-Length from ``reader``: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_an_http_1_0_stream_is_sent_unchunked_and_ends_with_the_connection() -> None:
    async with cortex(FakeNeuron("n1", chunks=3)) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        writer.write(post(b'{"model": "m1", "stream": true}', version="1.0"))
        answer = await asyncio.wait_for(reader.read(), 10)  # read() ends when cortex closes
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding" not in head.lower()
        assert b"connection: close" in head.lower()
        assert body.count(b"data: ") == 4  # three chunks and [DONE]
        assert body.endswith(b"data: [DONE]\n\n")


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async with cortex(FakeNeuron("n1")) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        writer.write(post(b'{"model": "m1"}') + post(b'{"model": "nope"}') + post(b"{"))
        statuses = []
        for _ in range(3):
            head, body = await read_answer(reader)
            statuses.append(int(head.split()[1]))
            json.loads(body)
        writer.close()
        assert statuses == [200, 404, 400]


async def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent() -> None:
    async with cortex(FakeNeuron("n1")) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        body = b'{"model": "m1"}'
        request = post(body, extra=b"expect: 100-continue\r\n")
        writer.write(request[: -len(body)])  # the head only: the body waits for the 100
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        head, answer = await read_answer(reader)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(answer)["node"] == "n1"
        assert "expect" not in c.neurons["n1"].seen[0]["headers"]


async def test_a_chunked_body_over_the_limit_is_413_and_the_next_request_is_served() -> None:
    async def body() -> AsyncIterator[bytes]:  # no Content-Length: the size shows as it comes
        yield b'{"model": "m1", "prompt": "'
        for _ in range(10):
            yield b"x" * 100
        yield b'"}'

    async with cortex(FakeNeuron("n1"), gateway={"max_body_bytes": 500}) as c:
        response = await c.client.post(CHAT, content=body())
        assert response.status_code == 413
        assert response.json()["error"]["message"] == (
            "request body exceeds the limit of 500 bytes"
        )
        # The rest of the body was not read: the connection closes, and the next request
        # goes on a new one.
        assert response.headers["connection"] == "close"
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200
        assert c.neurons["n1"].seen[-1]["body"] == {"model": "m1"}
        assert len(c.neurons["n1"].seen) == 1


async def test_a_client_gone_before_a_whole_answer_stops_the_request_at_once() -> None:
    """The upstream request is dropped at once, and counted as 499."""
    fake = FakeNeuron("n1")
    async with cortex(fake) as c:
        fake.answer_delay = 30.0
        with contextlib.suppress(httpx.ReadTimeout):
            await c.client.post(CHAT, json={"model": "m1"}, timeout=0.3)
        node = c.gateway.fleet.nodes[0]
        for _ in range(100):  # well before the neuron's answer would come
            if node.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert node.in_flight == 0
        metrics = await c.metrics()
        assert (
            'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n1",status="499"} 1.0'
            in metrics
        )
        fake.answer_delay = 0.0
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_a_client_that_stops_reading_a_stream_pauses_the_neuron_and_loses_nothing() -> None:
    """Back-pressure: cortex stops reading from the neuron rather than buffer the stream for
    a client that does not read. A stalled client is not a silent neuron: the stall here is
    longer than ``idle_timeout``, and the stream still ends as it should."""
    fake = FakeNeuron("n1", chunks=2000, pad=32 * 1024)  # 64 MiB of events
    async with cortex(fake, gateway={"idle_timeout": 0.3}) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        writer.write(post(b'{"model": "m1", "stream": true}'))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(1.0)  # the client reads nothing
        stalled = fake.sent
        assert stalled < fake.chunks  # socket buffers hold a few MiB, not 64
        await asyncio.sleep(0.4)
        assert fake.sent == stalled  # paused, not slow
        body = bytearray()
        while not body.endswith(b"0\r\n\r\n"):
            piece = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert piece, "cortex closed the connection before the end of the stream"
            body += piece
        writer.close()
        assert b'"error"' not in body
        order = [int(n) for n in re.findall(rb'"content": "t(\d+)x', body)]
        assert order == list(range(fake.chunks))
        assert body.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_a_client_that_leaves_while_its_stream_is_held_back_ends_it_upstream() -> None:
    """A stalled client that then goes away: the held-back stream is dropped at the neuron."""
    fake = FakeNeuron("n1", chunks=2000, pad=32 * 1024)
    async with cortex(fake) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        writer.write(post(b'{"model": "m1", "stream": true}'))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await asyncio.sleep(0.5)  # held back: the neuron is paused
        assert fake.streaming == 1 and fake.sent < fake.chunks
        writer.transport.abort()
        node = c.gateway.fleet.nodes[0]
        for _ in range(100):
            if fake.streaming == 0 and node.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert fake.streaming == 0 and fake.sent < fake.chunks  # ended, not run to its end
        assert node.in_flight == 0
        assert (
            'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n1",status="499"} 1.0'
            in await c.metrics()
        )
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_the_app_still_relays_over_plain_asgi() -> None:
    """``create_app`` is an ASGI app for any server; only cortex's own skips ASGI."""
    async with cortex(FakeNeuron("n1")) as c:
        transport = httpx.ASGITransport(app=create_app(c.gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://cortex") as client:
            answer = await client.post(CHAT, json={"model": "m1"})
            assert answer.status_code == 200
            assert answer.json()["node"] == "n1"
            assert answer.headers["content-length"] == str(len(answer.content))
            missing = await client.post(CHAT, json={"model": "nope"})
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"
            too_big = await client.post(
                CHAT, content=b"x" * (c.gateway.settings.gateway.max_body_bytes + 1)
            )
            assert too_big.status_code == 413
