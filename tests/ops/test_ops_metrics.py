"""Every metric the Grafana dashboard and the alert rules query is one a running cortex or
neuron exposes (vLLM's own names through the neuron, from an engine it runs).

A cortex in front of a neuron running the fake engine, one request through both; then the
names in each query must be among the families the two ``/metrics`` pages show (a histogram
counts with its ``_bucket``/``_sum``/``_count`` series, a counter with ``_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from cortex_testing import free_port, served
from neuron_testing import running, settings_for
from ops_kit import SYNTHETIC, dashboard_queries, metric_names, rule_queries
from prometheus_client.parser import text_string_to_metric_families

from cortex.app import build, create_app, create_metrics_app
from cortex.settings import Catalogue, CortexSettings

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def exposed(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


@contextlib.asynccontextmanager
async def cortex_in_front_of(neuron_url: str) -> AsyncIterator[tuple[str, str]]:
    settings = CortexSettings(
        neurons=[{"name": "n1", "endpoint": neuron_url}], poll={"interval": 0.1, "timeout": 2}
    )
    gateway = build(settings, Catalogue(models=[]))
    api, metrics = free_port(), free_port()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(gateway.session.close)
        await stack.enter_async_context(
            served((create_app(gateway), api), (create_metrics_app(gateway), metrics))
        )
        yield f"http://127.0.0.1:{api}", f"http://127.0.0.1:{metrics}/metrics"


async def test_every_queried_metric_is_exposed() -> None:
    async with running(settings_for()) as neuron:
        assert (await neuron.load("m1")).status_code == 200
        async with (
            cortex_in_front_of(neuron.url) as (api, metrics_url),
            httpx.AsyncClient(base_url=api, timeout=30) as c,
        ):
            for _ in range(50):
                body = {"model": "m1", "stream": True, "max_tokens": 3}
                response = await c.post("/v1/chat/completions", json=body)
                if response.status_code == 200:
                    break
                await asyncio.sleep(0.1)  # until cortex has polled the neuron
            assert response.status_code == 200, response.text
            names = exposed((await c.get(metrics_url)).text)
        names |= exposed((await neuron.client.get("/metrics")).text)

    queried = {
        name: expr for expr in dashboard_queries() + rule_queries() for name in metric_names(expr)
    }
    assert any(name.startswith("vllm:") for name in queried)
    missing = {name: expr for name, expr in queried.items() if name not in names | SYNTHETIC}
    assert not missing, f"queried but exposed by neither cortex nor the neuron: {missing}"
