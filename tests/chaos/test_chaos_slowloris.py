"""slowloris: connections that drip a request head a byte at a time, or send nothing, are
closed once ``gateway.header_timeout`` has passed (408 when some bytes came), while real
clients are served as usual meanwhile (issue 14, item 2)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

HEADER_TIMEOUT = 2.0
SLACK = 2.0
"""Closing may lag the deadline by a timer's granularity and a busy 2-core machine."""
DRIPPING = 60
SILENT = 60
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: cortex\r\nContent-Type: application/json\r\n"


async def _slow(port: int, head: bytes, *, first: bytes = b"") -> tuple[float, bytes]:
    """Connect, optionally complete one request (``first``), then drip ``head`` a byte every
    0.25 s; the seconds from the drip's start until cortex closes, and what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if first:
            writer.write(first)
            async with asyncio.timeout(10):
                answer = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer)
                assert length, answer
                await reader.readexactly(int(length.group(1)))
        began = time.monotonic()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.25)
                await asyncio.sleep(3600)

        dripping = asyncio.create_task(drip())
        received = b""
        try:
            async with asyncio.timeout(HEADER_TIMEOUT + SLACK + 5):
                with contextlib.suppress(ConnectionError):
                    while chunk := await reader.read(65536):
                        received += chunk
        except TimeoutError:
            return float("inf"), received
        finally:
            dripping.cancel()
        return time.monotonic() - began, received
    finally:
        writer.transport.abort()


async def test_slowloris(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1") as n1,
        cortex(tmp_path, [n1], gateway={"header_timeout": HEADER_TIMEOUT}) as gw,
    ):
        port = gw.api_port
        health = b"GET /health HTTP/1.1\r\nHost: cortex\r\n\r\n"
        attackers = [asyncio.create_task(_slow(port, HEAD)) for _ in range(DRIPPING)]
        attackers += [asyncio.create_task(_slow(port, b"")) for _ in range(SILENT)]
        # A kept-alive connection that starts its next request and never finishes it.
        attackers += [asyncio.create_task(_slow(port, HEAD, first=health)) for _ in range(10)]

        latencies = []
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            while not all(a.done() for a in attackers):
                mine = nonce()
                began = time.monotonic()
                answer = await client.post("/v1/chat/completions", json=chat(mine))
                latencies.append(time.monotonic() - began)
                assert answer.status_code == 200 and answer.json()["id"] == mine
                await asyncio.sleep(0.2)
        results = [a.result() for a in attackers]
        assert max(latencies) < 1.0, f"real clients waited up to {max(latencies):.2f}s"

        slow = [round(took, 1) for took, _ in results if took > HEADER_TIMEOUT + SLACK]
        assert not slow, f"{len(slow)} of {len(results)} slow connections outlived the timeout"
        early = [round(took, 1) for took, _ in results if took < HEADER_TIMEOUT - 0.5]
        assert not early, f"{len(early)} connections were closed before their time"
        for _, received in results[:DRIPPING] + results[-10:]:
            assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        for _, received in results[DRIPPING : DRIPPING + SILENT]:
            assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert gw.alive()
