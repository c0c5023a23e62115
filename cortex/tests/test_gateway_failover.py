"""Failures: retried before the first byte, reported in-band after it, and disconnects abort."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
from cortex_testing import cortex, sse_data
from fake_neuron import FakeNeuron

CHAT = "/v1/chat/completions"


async def test_a_neuron_that_cannot_be_reached_is_retried_on_another() -> None:
    async with cortex(FakeNeuron("n2"), dead=("n1",)) as c:
        # Make the dead one look up and serving (a stale view), and the preferred choice.
        dead = next(n for n in c.gateway.fleet.nodes if n.name == "n1")
        dead.up, dead.models = True, {"m1": {"id": "m1", "status": "ready"}}
        c.gateway.fleet.changed()
        live = next(n for n in c.gateway.fleet.nodes if n.name == "n2")
        live.in_flight = 5  # so n1 is tried first
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 200
        assert response.json()["node"] == "n2"
        live.in_flight = 0
        metrics = await c.metrics()
        assert 'cortex_request_errors_total{model="m1",node="n1",reason="connect_failed"} 1.0' in (
            metrics
        )


async def test_no_reachable_neuron_is_a_502() -> None:
    async with cortex(dead=("n1",)) as c:
        node = c.gateway.fleet.nodes[0]
        node.up, node.models = True, {"m1": {"id": "m1", "status": "ready"}}
        c.gateway.fleet.changed()
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_error"
        assert "could not be reached" in response.json()["error"]["message"]


@pytest.mark.logs_error("error in the app on /v1/")  # the fake neuron's own, as it dies
async def test_a_neuron_dying_mid_stream_becomes_one_error_event() -> None:
    async with cortex(FakeNeuron("n1", chunks=5, break_after=2)) as c:
        response = await c.client.post(CHAT, json={"model": "m1", "stream": True})
        assert response.status_code == 200
        data = sse_data(response.text)
        assert len(data) == 3
        assert json.loads(data[2])["error"]["code"] == "upstream_error"
        assert "broke off" in json.loads(data[2])["error"]["message"]

        anthropic = await c.client.post("/v1/messages", json={"model": "m1", "stream": True})
        tail = anthropic.text.strip().split("\n\n")[-1]
        assert tail.startswith("event: error\ndata: ")
        error = json.loads(tail.split("data: ", 1)[1])
        assert error["type"] == "error"
        assert error["error"]["type"] == "api_error"
        assert (await c.client.get("/health")).json()["status"] == "ok"


async def test_an_idle_neuron_times_out_in_band() -> None:
    async with cortex(
        FakeNeuron("n1", chunks=3, chunk_delay=2.0), gateway={"idle_timeout": 0.5}
    ) as c:
        response = await c.client.post(CHAT, json={"model": "m1", "stream": True})
        data = sse_data(response.text)
        assert json.loads(data[-1])["error"]["code"] == "upstream_timeout"


async def test_a_silent_neuron_is_a_504_before_the_first_byte() -> None:
    async with cortex(FakeNeuron("n1", answer_delay=3.0), gateway={"idle_timeout": 0.5}) as c:
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        anthropic = await c.client.post("/v1/messages", json={"model": "m1"})
        assert anthropic.status_code == 504
        assert anthropic.json()["type"] == "error"


async def test_a_client_that_goes_away_cancels_the_upstream_request() -> None:
    fake = FakeNeuron("n1", chunks=1000, chunk_delay=0.02)
    async with cortex(fake) as c:
        async with c.client.stream("POST", CHAT, json={"model": "m1", "stream": True}) as r:
            lines = r.aiter_lines()
            await anext(lines)
            assert fake.streaming == 1
        for _ in range(100):
            if fake.streaming == 0:
                break
            await asyncio.sleep(0.02)
        assert fake.streaming == 0
        assert fake.cancelled == 1
        assert c.gateway.fleet.nodes[0].in_flight == 0
        assert (
            'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n1",status="499"} 1.0'
            in (await c.metrics())
        )


async def test_requests_spread_over_neurons_serving_the_model() -> None:
    async with cortex(FakeNeuron("n1"), FakeNeuron("n2"), FakeNeuron("n3", models={})) as c:
        nodes = [(await c.client.post(CHAT, json={"model": "m1"})).json()["node"] for _ in range(6)]
        assert sorted(nodes) == ["n1", "n1", "n1", "n2", "n2", "n2"]


async def test_a_client_gone_before_the_answer_starts_leaves_nothing_behind() -> None:
    fake = FakeNeuron("n1", chunks=3)
    async with cortex(fake) as c:
        fake.answer_delay = 1.0
        with contextlib.suppress(httpx.ReadTimeout):
            await c.client.post(CHAT, json={"model": "m1"}, timeout=0.3)
        # Streams: headers come late from a neuron that is slow to start answering.
        fake.answer_delay = 0.0
        fake.chunk_delay = 1.0
        with contextlib.suppress(httpx.ReadTimeout):
            await c.client.post(CHAT, json={"model": "m1", "stream": True}, timeout=0.3)
        node = c.gateway.fleet.nodes[0]
        for _ in range(100):
            if node.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert node.in_flight == 0
        assert 'cortex_inflight_requests{model="m1",node="n1"} 0.0' in await c.metrics()
