"""A POST the neuron read in full and then closed on is never sent to another neuron
(issue 14, item 4): the generation would run twice. Only a request that provably was not
delivered may be tried elsewhere."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

REQUESTS = 30


async def test_a_delivered_request_is_not_sent_again(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1", mode="close_after_body") as n1,
        neuron(tmp_path, "n2") as n2,
        cortex(tmp_path, [n1, n2]) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:

            async def ask() -> tuple[str, int]:
                mine = nonce()
                return mine, (
                    await client.post("/v1/chat/completions", json=chat(mine))
                ).status_code

            results = await asyncio.gather(*(ask() for _ in range(REQUESTS)))
        status = dict(results)
        to_n1, to_n2 = n1.nonces(), n2.nonces()
        assert to_n1, "routing never chose the neuron that closes (the test proves nothing)"
        twice = [n for n, count in Counter(to_n1 + to_n2).items() if count > 1]
        assert not twice, f"{len(twice)} of {REQUESTS} requests were delivered twice"
        # The neuron that read the request and closed is the only one that saw it: 502.
        assert {status[n] for n in to_n1} == {502}
        assert {status[n] for n in to_n2} == {200}
        assert set(status) == set(to_n1) | set(to_n2)  # every request reached exactly one
