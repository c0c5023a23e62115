"""5,000 idle connections (issue 14, item 2): real requests are still served and ``/metrics``
stays reachable; past ``gateway.max_connections`` a new connection gets a definite 503 with
``Retry-After``, is closed, and the episode is logged once, never dropped in silence."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from chaos_support import CortexProcess, chat, cortex, exchange, neuron, nonce

IDLE = 5000
HELD = {"header_timeout": 120.0, "keep_alive_timeout": 120.0}
"""Long enough that no idle connection is closed by a timeout while the test runs."""
FD_SLACK = 20
"""Descriptors cortex may hold beyond its baseline, taken after one round of real requests
(so the pools of neuron connections and of this test's client connections are full): the
poller's connections come and go, and a round may open a few more pooled ones."""


@asynccontextmanager
async def idle_connections(port: int, count: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft > count + 100, f"RLIMIT_NOFILE is {soft}: too low to hold {count} sockets"
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)

    try:
        for start in range(0, count, 500):
            await asyncio.gather(*(one() for _ in range(min(500, count - start))))
        yield writers
    finally:
        for writer in writers:
            writer.transport.abort()


async def _until_fds(
    gw: CortexProcess, check: Callable[[int], bool], what: str, timeout: float = 20
) -> int:
    end = time.monotonic() + timeout
    while True:
        fds = gw.fds()
        if check(fds):
            return fds
        assert time.monotonic() < end, f"{what}: cortex holds {fds} descriptors"
        await asyncio.sleep(0.2)


async def _served(gw: CortexProcess, client: httpx.AsyncClient) -> None:
    """Real requests get their own answers quickly, and the metrics port answers."""

    async def ask() -> None:
        mine = nonce()
        answer = await client.post(f"{gw.url}/v1/chat/completions", json=chat(mine))
        assert answer.status_code == 200 and answer.json()["id"] == mine, answer.text

    began = time.monotonic()
    await asyncio.gather(*(ask() for _ in range(20)))
    assert (await client.get(f"{gw.url}/health")).status_code == 200
    assert (await client.get(gw.metrics_url)).status_code == 200
    assert time.monotonic() - began < 5


async def test_five_thousand_idle_connections(tmp_path: Path) -> None:
    with neuron(tmp_path, "n1") as n1, cortex(tmp_path, [n1], gateway=HELD) as gw:
        async with httpx.AsyncClient(timeout=10) as client:
            await _served(gw, client)
            baseline = gw.fds()
            async with idle_connections(gw.api_port, IDLE):
                # Held open by cortex, not refused or dropped: its descriptors show them.
                await _until_fds(
                    gw, lambda fds: fds >= baseline + IDLE - FD_SLACK, "5,000 accepted"
                )
                await _served(gw, client)
            await _until_fds(gw, lambda fds: fds <= baseline + FD_SLACK, "idle ones released")
            await _served(gw, client)
        assert gw.alive()


async def test_over_max_connections(tmp_path: Path) -> None:
    cap = 1000
    gateway = {**HELD, "max_connections": cap}
    with neuron(tmp_path, "n1") as n1, cortex(tmp_path, [n1], gateway=gateway) as gw:
        warnings_before = gw.log().count("WARNING")
        async with httpx.AsyncClient(timeout=10) as client:
            await _served(gw, client)
            baseline = gw.fds()
            async with idle_connections(gw.api_port, cap):
                await _until_fds(
                    gw, lambda fds: fds >= baseline + cap - FD_SLACK, "the first 1,000 held"
                )
                health = b"GET /health HTTP/1.1\r\nHost: cortex\r\n\r\n"
                refused = await asyncio.gather(
                    *(exchange(gw.api_port, health, timeout=5) for _ in range(200))
                )
                for reply in refused:
                    assert reply.status == 503, reply.raw[:200]
                    assert "retry-after" in reply.headers
                    assert reply.closed
                # Still reachable for its operator, on the metrics port.
                assert (await client.get(gw.metrics_url)).status_code == 200
            await _until_fds(gw, lambda fds: fds <= baseline + FD_SLACK, "idle ones released")
            await _served(gw, client)
        warned = gw.log().count("WARNING") - warnings_before
        assert 1 <= warned <= 3, f"{warned} warnings for one episode of 200 refusals"
        assert gw.alive()
