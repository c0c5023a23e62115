"""Idle pooled connections to a neuron are closed after ``gateway.upstream_idle_timeout``
(issue 14, item 10), as the neuron sees it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

IDLE = 1.5


async def test_idle_upstream_connections_close(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1") as n1,
        cortex(tmp_path, [n1], gateway={"upstream_idle_timeout": IDLE}) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=chat(nonce())) for _ in range(10))
            )
        assert {a.status_code for a in answers} == {200}
        done = time.monotonic()
        assert (await n1.astats())["relay_connections"] > 0  # pooled, kept alive
        while (await n1.astats())["relay_connections"] > 0:
            assert time.monotonic() - done < IDLE + 2, "idle upstream connections stay open"
            await asyncio.sleep(0.1)
