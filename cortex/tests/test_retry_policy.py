"""A request goes to a second neuron only when it provably never reached the first.

Generation is not idempotent: a neuron that took the whole request and then hung up may be
running it, so sending it again elsewhere would run it twice.
"""

from __future__ import annotations

import asyncio

from cortex_testing import Running, cortex
from fake_neuron import FakeNeuron
from scripted import ok, read_request, scripted

CHAT = "/v1/chat/completions"


def route_first_to(c: Running, name: str, base: str) -> None:
    """Point neuron ``name`` at ``base``, shown serving m1, and make it the first choice."""
    node = c.gateway.fleet.node(name)
    node.base, node.up = base, True
    node.models = {"m1": {"id": "m1", "status": "ready"}}
    c.gateway.fleet.changed()
    for other in c.gateway.fleet.nodes:
        if other is not node:
            other.in_flight = 5


async def test_a_neuron_that_took_the_request_and_hung_up_is_not_retried_elsewhere() -> None:
    received: list[bytes] = []

    async def takes_it_and_hangs_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        received.append(await read_request(reader))

    fake = FakeNeuron("n2")
    async with scripted(takes_it_and_hangs_up) as base, cortex(fake, dead=("n1",)) as c:
        route_first_to(c, "n1", base)
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 502
        assert "without answering" in response.json()["error"]["message"]
        assert len(received) == 1
        assert fake.seen == []  # never sent a second time


async def test_a_neuron_that_refused_the_connection_is_retried_elsewhere() -> None:
    fake = FakeNeuron("n2")
    async with cortex(fake, dead=("n1",)) as c:
        route_first_to(c, "n1", c.gateway.fleet.node("n1").base)
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 200
        assert response.json()["node"] == "n2"
        assert len(fake.seen) == 1


async def test_a_reused_connection_closed_before_answering_is_not_sent_again() -> None:
    requests: list[int] = []

    async def closes_when_reused(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        requests.append(len(requests))
        await read_request(reader)
        writer.write(
            ok(b'{"node": "scripted"}').replace(
                b"OK\r\n", b"OK\r\ncontent-type: application/json\r\n"
            )
        )
        await writer.drain()
        await read_request(reader)  # its keep-alive timeout fires as cortex reuses it

    fake = FakeNeuron("n2")
    async with scripted(closes_when_reused) as base, cortex(fake, dead=("n1",)) as c:
        route_first_to(c, "n1", base)
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 200
        assert response.json()["node"] == "scripted"
        # The neuron read the second request and closed: it may be running it, so it is
        # not sent again, to it or to another neuron.
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 502
        assert len(requests) == 1
        assert fake.seen == []
        assert 'reason="upstream_closed"' in await c.metrics()
