"""An unauthenticated pipelining flood (issue 20, item 1): 200 connections each send 2,000
pipelined ``GET /health`` (about 66 KB) and read nothing. cortex parses at most one request
ahead of the one it answers, so its RSS grows by under 200 MiB, ``/health`` from another
client answers within 2 s throughout, and the memory comes back once the attackers leave.

On caa7468 every request of a read became a queued exchange: this flood took cortex's RSS up
by gigabytes (1,000 connections: 53 MiB → 2.4 GB, ``/health`` down for about 30 s)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
from chaos_support import cortex, neuron

ATTACKERS = 200
PIPELINED = 2000
REQUEST = b"GET /health HTTP/1.1\r\nHost: cortex\r\n\r\n"
GROWTH_MIB = 200
AFTER_MIB = 64
"""RSS over the baseline once the attackers are gone: what the allocator keeps of its arenas."""
HEALTH_S = 2.0
FLOOD_S = 15.0


async def test_a_pipelining_flood_stays_bounded_and_health_answers(tmp_path: Path) -> None:
    with neuron(tmp_path, "n1") as n1, cortex(tmp_path, [n1]) as gw:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(20):  # warm up what answering /health allocates once
                assert (await client.get(f"{gw.url}/health")).status_code == 200
        baseline = gw.rss_kib()
        writers: list[asyncio.StreamWriter] = []

        async def attack() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", gw.api_port)
            writers.append(writer)
            writer.write(REQUEST * PIPELINED)  # and never reads

        try:
            await asyncio.gather(*(attack() for _ in range(ATTACKERS)))
            peak, slowest = baseline, 0.0
            end = time.monotonic() + FLOOD_S
            async with httpx.AsyncClient(timeout=HEALTH_S + 5) as probe:
                while time.monotonic() < end:
                    began = time.monotonic()
                    answer = await probe.get(f"{gw.url}/health")
                    slowest = max(slowest, time.monotonic() - began)
                    assert answer.status_code == 200
                    peak = max(peak, gw.rss_kib())
                    await asyncio.sleep(0.25)
            assert (peak - baseline) / 1024 < GROWTH_MIB, f"RSS {baseline} → {peak} KiB"
            assert slowest < HEALTH_S, f"/health took {slowest:.2f}s under the flood"
        finally:
            for writer in writers:
                writer.transport.abort()
        # The attackers have left: their connections close and what they cost is freed.
        for _ in range(40):
            if gw.rss_kib() - baseline < AFTER_MIB * 1024:
                break
            await asyncio.sleep(0.5)
        after = gw.rss_kib()
        assert (after - baseline) / 1024 < AFTER_MIB, f"RSS {baseline} → {after} KiB after"
        with contextlib.suppress(httpx.TransportError):
            assert await gw.serves()
