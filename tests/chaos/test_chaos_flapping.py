"""A neuron that flaps (up, down, up: connections dropped, connects refused) beside a good
one: every client gets a definite answer, a 200 always carries the client's own answer, and
``cortex_requests_total`` counts what clients got, not attempts (issue 14, item 11)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

WAVES = 30
CLIENTS = 8


async def test_flapping_neuron(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "steady") as steady,
        neuron(tmp_path, "flappy") as flappy,
        cortex(tmp_path, [steady, flappy], poll={"down_after": 3}) as gw,
    ):
        before = await gw.requests_by_status()
        await flappy.script(flap=[0.4, 0.4])
        seen: Counter[str] = Counter()
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:

            async def ask() -> None:
                mine = nonce()
                answer = await client.post("/v1/chat/completions", json=chat(mine))
                seen[str(answer.status_code)] += 1
                if answer.status_code == 200:
                    assert answer.json()["id"] == mine
                else:
                    assert answer.status_code in (502, 503, 504), answer.text
                    assert json.loads(answer.text)["error"]["code"]

            for _ in range(WAVES):
                await asyncio.gather(*(ask() for _ in range(CLIENTS)))
                await asyncio.sleep(0.1)
        total = WAVES * CLIENTS
        async with asyncio.timeout(5):  # a request is counted as its answer ends: let it land
            while True:
                after = await gw.requests_by_status()
                if sum(after.values()) - sum(before.values()) >= total:
                    break
                await asyncio.sleep(0.1)
        async with asyncio.timeout(5):  # it may be down now: ask until it is up to listen
            while True:
                try:
                    await flappy.script(flap=None)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        counted = {s: after.get(s, 0) - before.get(s, 0) for s in after}
        counted = {s: n for s, n in counted.items() if n}
        assert sum(seen.values()) == total
        assert counted == dict(seen), f"metrics {counted} but clients saw {dict(seen)}"
        tried = sum(len(n) for n in (await flappy.astats())["seen"].values())
        assert tried > 0, "the flapping neuron was never tried"
        assert gw.alive()
