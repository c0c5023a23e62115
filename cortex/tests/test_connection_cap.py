"""A full API port answers 503 and says so; /metrics on its own port stays reachable."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron


async def test_a_full_api_port_answers_503_and_metrics_stay_reachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "cortex.http")
    async with cortex(FakeNeuron("n1"), gateway={"max_connections": 3}) as c:
        await c.client.aclose()  # its kept-alive connection would count
        port = c.client.base_url.port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert "cortex_client_connections 3.0" in await c.metrics()
        answers = []
        for _ in range(5):
            async with httpx.AsyncClient() as client:
                answers.append(await client.get(f"http://127.0.0.1:{port}/health"))
        assert [a.status_code for a in answers] == [503] * 5
        assert answers[0].headers["retry-after"] == "5"
        assert answers[0].headers["connection"] == "close"
        assert answers[0].json()["error"]["code"] == "too_many_connections"
        assert len([r for r in caplog.records if "max_connections" in r.getMessage()]) == 1
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        assert "cortex_client_connections 0.0" in await c.metrics()
