"""What a neuron may legally send, or get wrong in its numbers, must not hurt (issue 14,
item 12): SSE framed with CRLF flows event by event, and a negative token count in its usage
is ignored rather than breaking the request or ``/metrics``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

GAP = 1.0


async def test_crlf_framed_events_are_relayed_as_they_come(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1", crlf=True, chunks=3, chunk_delay=GAP) as n1,
        cortex(tmp_path, [n1]) as gw,
    ):
        mine = nonce()
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
            began = time.monotonic()
            body = chat(mine, stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                arrivals = []
                async for line in answer.aiter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.monotonic() - began)
                        assert json.loads(line[6:])["id"] == mine
        # The stream lasts 3 x GAP; its first event must not wait for the end.
        assert arrivals[0] < GAP, arrivals
        assert len(arrivals) == 3  # the usage event cortex asked for is not passed on


async def test_negative_token_counts_are_survived(tmp_path: Path) -> None:
    usage = {"prompt_tokens": -3, "completion_tokens": -5, "total_tokens": -8}
    with neuron(tmp_path, "n1", usage=usage) as n1, cortex(tmp_path, [n1]) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
            for stream in (False, True):
                mine = nonce()
                answer = await client.post("/v1/chat/completions", json=chat(mine, stream=stream))
                assert answer.status_code == 200, answer.text
                assert mine in answer.text
        samples = await gw.metrics()
        tokens = {k: v for k, v in samples.items() if "_tokens_total{" in k}
        assert all(v >= 0 for v in tokens.values()), tokens
        assert "Traceback" not in gw.log()
        assert gw.alive()
