"""``cortex_requests_total`` counts what clients got, once per request, not each attempt.

A request retried on a second neuron that answered is one 200; the failed attempt shows in
``cortex_request_errors_total`` only.
"""

from __future__ import annotations

from cortex_testing import Running, cortex
from fake_neuron import FakeNeuron

CHAT = "/v1/chat/completions"


def requests_rows(metrics: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith("cortex_requests_total{")]


def prefer(c: Running, name: str) -> None:
    node = c.gateway.fleet.node(name)
    node.up, node.models = True, {"m1": {"id": "m1", "status": "ready"}}
    c.gateway.fleet.changed()
    for other in c.gateway.fleet.nodes:
        if other is not node:
            other.in_flight = 5


async def test_a_success_after_an_unreachable_neuron_is_one_200() -> None:
    async with cortex(FakeNeuron("n2"), dead=("n1",)) as c:
        prefer(c, "n1")
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200
        assert (await c.client.post(CHAT, json={"model": "m1", "stream": True})).status_code == 200
        for node in c.gateway.fleet.nodes:
            node.in_flight = 0
        metrics = await c.metrics()
        assert requests_rows(metrics) == [
            'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n2",status="200"} 2.0'
        ]
        assert 'cortex_request_errors_total{model="m1",node="n1",reason="connect_failed"} 2.0' in (
            metrics
        )


async def test_a_success_after_a_neuron_said_503_is_one_200() -> None:
    async with cortex(FakeNeuron("n1", answer_status=503), FakeNeuron("n2")) as c:
        prefer(c, "n1")
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200
        for node in c.gateway.fleet.nodes:
            node.in_flight = 0
        metrics = await c.metrics()
        assert requests_rows(metrics) == [
            'cortex_requests_total{endpoint="/v1/chat/completions",key="_anonymous",model="m1",node="n2",status="200"} 1.0'
        ]
        assert 'reason="neuron_unavailable"} 1.0' in metrics


async def test_when_every_neuron_fails_the_client_s_502_is_counted_once() -> None:
    async with cortex(dead=("n1", "n2")) as c:
        for node in c.gateway.fleet.nodes:
            node.up, node.models = True, {"m1": {"id": "m1", "status": "ready"}}
        c.gateway.fleet.changed()
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 502
        rows = requests_rows(await c.metrics())
        assert len(rows) == 1 and rows[0].endswith('status="502"} 1.0')
