"""Idle kept-alive connections to a neuron are closed after ``gateway.upstream_idle_timeout``.

Not only when the pool is next used: a cortex that goes quiet must not hold connections
(and the neuron's file descriptors) open for ever.
"""

from __future__ import annotations

import asyncio
import time

from cortex_testing import cortex
from fake_neuron import FakeNeuron
from scripted import ok, read_request, scripted

from cortex.upstream.wire import Upstream


async def test_an_idle_connection_is_closed_at_the_timeout_and_not_before() -> None:
    closed: list[float] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"x"))
        await writer.drain()
        assert await reader.read() == b""  # cortex closed it
        closed.append(time.monotonic())

    client = Upstream(connect_timeout=1, idle_timeout=5, keepalive=0.4)
    async with scripted(handler) as base:
        answered = []
        for _ in range(3):  # three connections at once, pooled at about the same time
            answered.append(client.post(base, "/x", b"{}", []))
        for answer in await asyncio.gather(*answered):
            assert await answer.read() == b"x"
        pooled = time.monotonic()
        for _ in range(60):
            if len(closed) == 3:
                break
            await asyncio.sleep(0.05)
    assert len(closed) == 3
    assert all(0.35 < at - pooled < 2.0 for at in closed)
    client.close()


async def test_the_setting_reaches_the_relay_s_pool() -> None:
    async with cortex(FakeNeuron("n1"), gateway={"upstream_idle_timeout": 7.5}) as c:
        assert c.gateway.upstream.keepalive == 7.5
