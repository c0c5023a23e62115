"""SIGTERM while a stream runs past ``gateway.drain_timeout`` (issue 14, item 9): the stream is
cut with an in-band error event, not silently, the neuron sees it end, and cortex exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

DRAIN = 1.0


async def test_drain_expiry_ends_streams_with_an_error_event(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1", chunks=0, chunk_delay=0.2) as n1,
        cortex(tmp_path, [n1], gateway={"drain_timeout": DRAIN}) as gw,
    ):
        mine = nonce()
        events: list[str] = []
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            body = chat(mine, stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                assert answer.status_code == 200
                lines = answer.aiter_lines()
                async with asyncio.timeout(DRAIN + 10):
                    while not (line := await anext(lines)).startswith("data: "):
                        pass
                    events.append(line[6:])
                    gw.proc.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    try:
                        async for line in lines:  # ends when cortex ends the stream
                            if line.startswith("data: "):
                                events.append(line[6:])
                    except httpx.RemoteProtocolError:
                        raise AssertionError(
                            f"the stream was cut, not ended; its last event: {events[-1]}"
                        ) from None
        took = time.monotonic() - signalled
        assert DRAIN - 0.3 < took < DRAIN + 3, f"the stream ended {took:.1f}s after SIGTERM"
        *relayed, last = events
        assert all(json.loads(e)["id"] == mine for e in relayed)
        error = json.loads(last).get("error")
        assert isinstance(error, dict) and error.get("type"), f"no in-band error event: {last}"
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        stats = await n1.astats()
        assert stats["streams_open"] == 0 and stats["streams_cut"] == 1
