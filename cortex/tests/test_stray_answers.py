"""A neuron's answer nobody asked for never reaches a client: its connection is not reused.

The bug this guards: an extra answer after a complete one, in the same read, completed a
second message on the connection, which went back to the pool twice; two requests then
shared it and got each other's answers.
"""

from __future__ import annotations

import asyncio

from scripted import ok, read_request, scripted

from cortex.upstream.wire import Upstream


async def test_an_extra_answer_in_the_same_read_drops_the_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            request = await read_request(reader)
            body = request.rsplit(b"\r\n\r\n", 1)[1]
            await asyncio.sleep(0.05 if body == b"slow" else 0)
            writer.write(ok(body) + ok(b"stray"))  # one answer asked for, two sent

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        first = await client.post(base, "/x", b"first", [])
        assert await first.read() == b"first"
        answers = await asyncio.gather(
            *(client.post(base, "/x", body, []) for body in (b"slow", b"a", b"b", b"c"))
        )
        bodies = [await answer.read() for answer in answers]
    assert bodies == [b"slow", b"a", b"b", b"c"]
    assert connections == 5  # none of them was used twice
    client.close()


async def test_an_extra_answer_while_idle_drops_the_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            request = await read_request(reader)
            writer.write(ok(request.rsplit(b"\r\n\r\n", 1)[1]))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(ok(b"stray"))

    client = Upstream(connect_timeout=1, idle_timeout=2)
    async with scripted(handler) as base:
        assert await (await client.post(base, "/x", b"one", [])).read() == b"one"
        await asyncio.sleep(0.2)  # the stray answer arrives while the connection is idle
        assert await (await client.post(base, "/x", b"two", [])).read() == b"two"
    assert connections == 2
    client.close()
