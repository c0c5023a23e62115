"""A neuron answer past a limit reaches the client as a clear 502, or as one in-band error
event once a stream has begun; the request is counted with its reason (issue 20, item 3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
from prometheus_client import generate_latest

from cortex.app import Gateway, build, create_app
from cortex.settings import Catalogue, CortexSettings
from cortex.upstream.memory import MemoryNeuron, Peer

Handler = Callable[[Peer], Coroutine[Any, Any, None]]
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def endless_event(peer: Peer) -> None:
    await peer.request()
    peer.send(STREAM_HEAD + chunk(b'data: {"choices": []}\n\n') + chunk(b"data: "))
    while not peer.closed_by_cortex.is_set():
        peer.send(chunk(b"z" * 16384))
        await asyncio.sleep(0)


async def endless_headers(peer: Peer) -> None:
    await peer.request()
    peer.send(b"HTTP/1.1 200 OK\r\n")
    while not peer.closed_by_cortex.is_set():
        peer.send(b"x-junk: 0123456789\r\n" * 50)
        await asyncio.sleep(0)


async def huge_answer(peer: Peer) -> None:
    await peer.request()
    peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    peer.send(b"content-length: 9999999\r\n\r\n{")


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """cortex (over ASGI) in front of one in-memory neuron serving m1 with ``handler``."""
    neuron = MemoryNeuron(handler)
    settings = CortexSettings(
        neurons=[{"name": "n1", "endpoint": "http://10.0.0.1:13131"}],
        gateway={
            "idle_timeout": 5,
            "upstream_max_event_bytes": 64 * 1024,
            "upstream_max_answer_bytes": 1024 * 1024,
        },
    )
    gw = build(settings, Catalogue(models=[]), connector=neuron)
    node = gw.fleet.node("n1")
    node.up, node.models = True, {"m1": {"id": "m1", "status": "ready", "in_flight": 0}}
    gw.fleet.changed()
    transport = httpx.ASGITransport(app=create_app(gw))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            yield client, gw
    finally:
        gw.upstream.close()
        await gw.session.close()
        await neuron.aclose()


def counted(gw: Gateway, status: str, reason: str) -> str:
    metrics = generate_latest(gw.metrics.registry).decode()
    assert f'status="{status}"' in metrics, metrics
    assert f'reason="{reason}"' in metrics, metrics
    return metrics


async def test_an_event_over_the_limit_ends_the_stream_with_one_error_event() -> None:
    async with serve(endless_event) as (client, gw):
        response = await client.post("/v1/chat/completions", json={"model": "m1", "stream": True})
        assert response.status_code == 200
        events = [e for e in response.content.split(b"\n\n") if e]
        assert events[0] == b'data: {"choices": []}'
        error = json.loads(events[-1].removeprefix(b"data: "))["error"]
        assert "an event is over 65536 bytes" in error["message"]
        assert len(events) == 2
        counted(gw, "502", "upstream_over_limit")


async def test_an_endless_head_is_a_502() -> None:
    async with serve(endless_headers) as (client, gw):
        response = await client.post("/v1/chat/completions", json={"model": "m1"})
        assert response.status_code == 502
        assert "over 100 headers" in response.json()["error"]["message"]
        counted(gw, "502", "upstream_over_limit")


async def test_a_whole_answer_over_the_limit_is_a_502() -> None:
    async with serve(huge_answer) as (client, gw):
        response = await client.post("/v1/chat/completions", json={"model": "m1"})
        assert response.status_code == 502
        assert "9999999 bytes, over 1048576" in response.json()["error"]["message"]
        counted(gw, "502", "upstream_over_limit")
