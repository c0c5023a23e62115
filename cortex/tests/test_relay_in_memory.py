"""The relay over ASGI against an in-memory neuron: no process, no port, exact bytes.

What cortex does between the client and the neuron's bytes (routing, the usage chunk it
asked for and drops again, the metrics) is tested here without any network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import generate_latest

from cortex.app import Gateway, build, create_app
from cortex.settings import Catalogue, CortexSettings
from cortex.upstream.memory import MemoryNeuron, Peer

EVENTS = [
    b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
    b'data: {"choices": [{"delta": {"content": "b"}}]}\r\n\r\n',
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)


async def stream_in_odd_pieces(peer: Peer) -> None:
    while await peer.request():
        peer.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for at in range(0, len(STREAM), 7):
            piece = STREAM[at : at + 7]
            peer.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        peer.send(b"0\r\n\r\n")


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, MemoryNeuron]]:
    neuron = MemoryNeuron(stream_in_odd_pieces)
    settings = CortexSettings(
        neurons=[{"name": "n1", "endpoint": "http://10.0.0.1:13131"}],
        gateway={"idle_timeout": 2},
    )
    gw = build(settings, Catalogue(models=[]), connector=neuron)
    node = gw.fleet.node("n1")
    node.up, node.models = True, {"m1": {"id": "m1", "status": "ready", "in_flight": 0}}
    gw.fleet.changed()
    yield gw, neuron
    gw.upstream.close()
    await gw.session.close()
    await neuron.aclose()


async def test_a_stream_is_relayed_event_by_event_less_the_usage_it_did_not_ask_for(
    gateway: tuple[Gateway, MemoryNeuron],
) -> None:
    gw, neuron = gateway
    app = create_app(gw)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cortex"
    ) as client:
        for _ in range(2):
            response = await client.post(
                "/v1/chat/completions", json={"model": "m1", "stream": True}
            )
            assert response.status_code == 200
            assert response.content == EVENTS[0] + EVENTS[1] + EVENTS[3]
    assert len(neuron.peers) == 1  # kept alive between the two
    sent = bytes(neuron.peers[0].received)
    assert sent.count(b'{"stream_options":{"include_usage":true},"model"') == 2
    metrics = generate_latest(gw.metrics.registry).decode()
    assert 'cortex_prompt_tokens_total{key="_anonymous",model="m1"} 6.0' in metrics
    assert (
        'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n1",status="200"} 2.0'
        in metrics
    )
