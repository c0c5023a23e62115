"""An unauthenticated pipelining flood (issue 20, item 1): 1,000 connections each send 2,000
pipelined ``GET /health`` (about 66 KB) and read nothing. cortex parses at most one request
ahead of the one it answers, so its RSS grows by under 200 MiB, ``/health`` from another
client answers within 2 s throughout, every attacker's connection closes once it has left,
and what the floods held is reused: RSS stops growing after the second of three floods.

``/health`` is asked on a connection opened before the flood, and on a new connection each
time. The 2 s bound holds for the new ones while the kernel dropped no handshake: where
``net.core.somaxconn`` is below the 1,000 attackers (cortex asks for 4,096 and warns at
start when the kernel caps it lower), the accept queue overflows and a new connection waits
on TCP retransmission (1 s, then 2, 4, 8 s), whatever cortex does; then each must still be
answered within ``FRESH_S``. CI failed once on a new connection's 7 s timeout (2026-12-08),
probably so: reproduced here only with cortex's backlog set to 128. The run's summary prints
each flood's figures, the dropped handshakes and ``somaxconn``.

On caa7468 every request of a read became a queued exchange: this flood took cortex's RSS up
by gigabytes (1,000 connections: 53 MiB → 2.4 GB, ``/health`` down for about 30 s)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from chaos_support import FLOOD_REPORT, CortexProcess, cortex, neuron

from cortex.server import accept_queue_cap

ATTACKERS = 1000
"""The issue's figure: each holds at most one request parsed ahead and ~64 KiB unparsed."""
PIPELINED = 2000
REQUEST = b"GET /health HTTP/1.1\r\nHost: cortex\r\n\r\n"
GROWTH_MIB = 200
AFTER_MIB = 128
"""RSS over the baseline once the attackers are gone: what the allocator keeps of its arenas
(about 80 MiB after 1,000 attackers; 1.4 GB on caa7468)."""
FLOODS = 3
AGAIN_MIB = 16
"""Floods after the second reuse what the earlier ones left: RSS after the third is within
this of RSS after the second. Measured: 55 → 137 → 217 → 218 → 219 MB after each of four
floods, all connections closed each time (a closed connection's objects are reference cycles
that wait for a full collection, rare after ``gc.freeze()``; the allocator keeps the pages)."""
HEALTH_S = 2.0
FRESH_S = 20.0
"""A new connection's bound when the kernel dropped handshakes meanwhile: TCP's retransmissions
(1 s, then 2, 4, 8 s: 15 s in all) and the 2 s."""
FLOOD_S = 5.0
"""How long each flood is watched. RSS peaks, and ``/health`` is slowest, in a flood's first
seconds, while cortex reads what every attacker sent (tests/chaos/README.md has the timeline)."""


async def test_a_pipelining_flood_stays_bounded_and_health_answers(tmp_path: Path) -> None:
    with neuron(tmp_path, "n1") as n1, cortex(tmp_path, [n1]) as gw:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(20):  # warm up what answering /health allocates once
                assert (await client.get(f"{gw.url}/health")).status_code == 200
        baseline, fds = gw.rss_kib(), gw.fds()
        afters = []
        for n in range(FLOODS):
            peak, kept, fresh, dropped = await flood(gw.url, gw.api_port, gw.rss_kib)
            FLOOD_REPORT.append(
                f"flood {n + 1}: RSS +{(peak - baseline) / 1024:.0f} MiB, slowest /health "
                f"{kept:.2f} s (kept-alive), {fresh:.2f} s (new connections), "
                f"{dropped} handshakes the kernel dropped (net.core.somaxconn "
                f"{accept_queue_cap()})"
            )
            assert (peak - baseline) / 1024 < GROWTH_MIB, f"RSS {baseline} → {peak} KiB"
            assert kept < HEALTH_S, f"/health took {kept:.2f}s under the flood"
            # With handshakes dropped, new connections wait on TCP's retransmission too.
            bound = FRESH_S if dropped else HEALTH_S
            assert fresh < bound, f"/health took {fresh:.2f}s on a new connection"
            # The attackers have left: their connections close and what they cost is freed
            # (but for what the allocator keeps of its arenas, which a second flood reuses).
            afters.append(await settled(gw, fds))
        first, second, *later = afters
        assert (first - baseline) / 1024 < AFTER_MIB, f"RSS {baseline} → {first} KiB after"
        for after in later:
            assert (after - second) / 1024 < AGAIN_MIB, f"RSS {second} → {after} KiB, again"
        with contextlib.suppress(httpx.TransportError):
            assert await gw.serves()


async def flood(url: str, port: int, rss_kib: Callable[[], int]) -> tuple[int, float, float, int]:
    """One flood of ``ATTACKERS``, ``FLOOD_S`` long: the peak RSS, the slowest /health on a
    connection opened before the flood and on new connections, and how many handshakes the
    kernel dropped meanwhile (a full accept queue)."""
    writers: list[asyncio.StreamWriter] = []

    async def attack() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(REQUEST * PIPELINED)  # and never reads

    async def watch(client: httpx.AsyncClient, end: float) -> float:
        """The slowest /health asked through ``client`` until ``end`` (inf: one timed out)."""
        slowest = 0.0
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                answer = await client.get(f"{url}/health")
            except httpx.TimeoutException:
                return math.inf
            slowest = max(slowest, time.monotonic() - began)
            assert answer.status_code == 200
            await asyncio.sleep(0.25)
        return slowest

    async def sample(end: float) -> int:
        peak = 0
        while time.monotonic() < end:
            peak = max(peak, rss_kib())
            await asyncio.sleep(0.25)
        return peak

    fresh_only = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(timeout=HEALTH_S + 5) as kept,
        httpx.AsyncClient(timeout=FRESH_S, limits=fresh_only) as fresh,
    ):
        assert (await kept.get(f"{url}/health")).status_code == 200  # its connection is open
        dropped = listen_drops()
        try:
            await asyncio.gather(*(attack() for _ in range(ATTACKERS)))
            end = time.monotonic() + FLOOD_S
            peak, slow_kept, slow_fresh = await asyncio.gather(
                sample(end), watch(kept, end), watch(fresh, end)
            )
            return peak, slow_kept, slow_fresh, listen_drops() - dropped
        finally:
            for writer in writers:
                writer.transport.abort()


def listen_drops() -> int:
    """The kernel's count of handshakes dropped at a listener (``TcpExt: ListenDrops``, which
    includes ``ListenOverflows``, a full accept queue); 0 where it cannot be read."""
    try:
        header, values = [
            line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]
        ]
    except (OSError, ValueError):
        return 0
    return int(dict(zip(header, values, strict=True)).get("ListenDrops", 0))


async def settled(gw: CortexProcess, fds: int) -> int:
    """RSS once the attackers' connections are closed (cortex answers what they sent until a
    write fails), then once it stops falling; at most 60 s on."""
    for _ in range(120):
        if gw.fds() <= fds + 8:
            break
        await asyncio.sleep(0.5)
    last = gw.rss_kib()
    for _ in range(10):
        await asyncio.sleep(0.5)
        now = gw.rss_kib()
        if now >= last:
            return now
        last = now
    return last
