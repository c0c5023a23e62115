"""A neuron that sends an extra, unasked-for answer on a pooled connection (issue 14, item 3):
no client may ever get an answer meant for someone else, and every client gets one answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

CLIENTS = 80
ROUNDS = 5


async def test_no_client_gets_another_clients_answer(tmp_path: Path) -> None:
    with neuron(tmp_path, "n1", mode="double") as n1, cortex(tmp_path, [n1]) as gw:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=gw.url, timeout=15, limits=limits) as client:

            async def ask() -> tuple[str, int, str]:
                mine = nonce()
                answer = await client.post("/v1/chat/completions", json=chat(mine))
                return mine, answer.status_code, answer.text

            results = []
            for _ in range(ROUNDS):  # rounds reuse the pooled neuron connections
                results += await asyncio.gather(*(ask() for _ in range(CLIENTS)))

        crossed = [
            (mine, text[:120])
            for mine, status, text in results
            if status == 200 and json.loads(text)["id"] != mine
        ]
        assert not crossed, f"{len(crossed)} of {len(results)} clients got another's answer"
        # The extra answer is the neuron's fault, never a client's: each gets its own.
        statuses = [status for _, status, _ in results]
        assert statuses == [200] * len(results), sorted(set(statuses))
        assert gw.alive()
