"""A descriptor limit below what ``max_connections`` needs (issue 20, item 11): cortex under
a hard ``RLIMIT_NOFILE`` of 256 says so in one warning at start, and with 150 streams held
(each costs two descriptors) ``/metrics`` and ``/health`` still answer within 2 s: past the
connections the limit has room for (96), a client gets 503 instead of every accept failing.

On caa7468 nothing warned, and at the limit accepts failed with EMFILE: ``/metrics`` was
unreachable (1,024 descriptors, 600 streams)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx
from chaos_support import cortex, neuron, nonce

NOFILE = 256
ROOM = (NOFILE - 64) // 2
"""Client connections cortex holds at this limit: two descriptors each, 64 spare."""
STREAMS = 150
ANSWER_S = 2.0


async def _stream(port: int, writers: list[asyncio.StreamWriter]) -> int:
    """Open a stream and return its status once its head (and for a 200 a first event)
    came; the connection stays open."""
    body = json.dumps(
        {"model": "m1", "stream": True, "messages": [{"role": "user", "content": nonce()}]}
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writers.append(writer)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: cortex\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with asyncio.timeout(20):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            await reader.readuntil(b"data: ")
    return status


async def test_at_the_descriptor_limit_metrics_and_health_answer(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1", chunks=0, chunk_delay=1.0) as n1,
        cortex(tmp_path, [n1], nofile=NOFILE, hard_nofile=True) as gw,
    ):
        warnings = [line for line in gw.log().splitlines() if "RLIMIT_NOFILE is 256" in line]
        assert len(warnings) == 1 and " WARNING " in warnings[0], gw.log()
        assert f"capped at {ROOM}" in warnings[0]
        writers: list[asyncio.StreamWriter] = []
        try:
            statuses = await asyncio.gather(
                *(_stream(gw.api_port, writers) for _ in range(STREAMS)), return_exceptions=True
            )
            held = statuses.count(200)
            assert held >= ROOM - 5, statuses  # (/health probes of the harness may hold a few)
            assert set(statuses) <= {200, 503}, statuses
            assert statuses.count(503) >= STREAMS - ROOM, statuses
            async with httpx.AsyncClient(timeout=ANSWER_S + 5) as client:
                for _ in range(5):
                    for url in (gw.metrics_url, f"{gw.url}/health"):
                        began = time.monotonic()
                        answer = await client.get(url)
                        took = time.monotonic() - began
                        assert answer.status_code in (200, 503), (url, answer.status_code)
                        assert took < ANSWER_S, f"{url} took {took:.2f}s"
                    assert (await client.get(gw.metrics_url)).status_code == 200
            assert gw.fds() < NOFILE
        finally:
            for writer in writers:
                writer.transport.abort()
        with contextlib.suppress(httpx.TransportError):
            assert await gw.serves()
