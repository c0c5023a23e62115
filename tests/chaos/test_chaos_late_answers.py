"""A neuron that sends every answer a second time, 2-200 ms late (issue 20, item 4): the
copy lands on a pooled connection, idle or already carrying the next client's request. No
client may get another's answer: the copy is skipped (it echoes the earlier request's
x-cortex-request), closes that connection, and is counted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

CLIENTS = 50
ROUNDS = 20  # 1,000 requests


async def test_late_second_answers_never_reach_another_client(tmp_path: Path) -> None:
    with neuron(tmp_path, "n1", mode="late_double") as n1, cortex(tmp_path, [n1]) as gw:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=gw.url, timeout=15, limits=limits) as client:

            async def ask() -> tuple[str, int, str]:
                mine = nonce()
                answer = await client.post("/v1/chat/completions", json=chat(mine))
                return mine, answer.status_code, answer.text

            results = []
            for _ in range(ROUNDS):  # rounds reuse the pooled neuron connections
                results += await asyncio.gather(*(ask() for _ in range(CLIENTS)))

        assert len(results) == CLIENTS * ROUNDS
        crossed = [
            (mine, text[:120])
            for mine, status, text in results
            if status == 200 and json.loads(text)["id"] != mine
        ]
        assert len(crossed) == 0, f"{len(crossed)} of {len(results)} got another's answer"
        # A copy that arrived after the next request went out echoes the request before:
        # it is skipped, and that next request still gets its own answer.
        statuses = [status for _, status, _ in results]
        assert statuses == [200] * len(results), sorted(set(statuses))
        samples = await gw.metrics()
        late = samples.get('cortex_upstream_stray_total{reason="late"}', 0)
        assert late > 0, samples  # the race the test is about happened, and was counted
        assert "ERROR" not in gw.log() and "Traceback" not in gw.log()
        assert gw.alive()
