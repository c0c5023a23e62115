"""Tricklers (issue 20, item 7): with ``max_connections = 20``, 20 clients send a request head
and then its body a byte per 0.5 s. ``body_timeout = 2``: each gets 408 and is closed 2 to 5 s
after its head, and a normal client, turned away with 503 while every slot is held, gets its
200 within 5 s.

On caa7468 no clock ran on a body: the tricklers held every slot for as long as they liked
(500 of them: 88 s, every other client 503)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

SLOTS = 20
BODY_TIMEOUT = 2.0
SLACK = 3.0
"""Closing may lag the deadline by a timer's granularity and a busy 2-core machine."""
BODY = json.dumps(chat("trickled")).encode()
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: cortex\r\nContent-Length: %d\r\n\r\n" % len(
    BODY
)


async def _trickle(port: int) -> tuple[float, bytes]:
    """Send a head, then the body a byte per 0.5 s; seconds until cortex closes, and what
    it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    writer.write(HEAD)

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in BODY:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)

    dripping = asyncio.create_task(drip())
    received = b""
    try:
        async with asyncio.timeout(BODY_TIMEOUT + SLACK + 5):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    received += chunk
        return time.monotonic() - began, received
    except TimeoutError:
        return float("inf"), received
    finally:
        dripping.cancel()
        writer.transport.abort()


async def test_tricklers_are_closed_within_body_timeout_and_a_client_is_served(
    tmp_path: Path,
) -> None:
    gateway = {"max_connections": SLOTS, "body_timeout": BODY_TIMEOUT}
    with neuron(tmp_path, "n1") as n1, cortex(tmp_path, [n1], gateway=gateway) as gw:
        tricklers = [asyncio.create_task(_trickle(gw.api_port)) for _ in range(SLOTS)]
        await asyncio.sleep(0.5)  # every slot is held now
        began = time.monotonic()
        mine, statuses = nonce(), []
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() - began < BODY_TIMEOUT + SLACK:
                answer = await client.post(f"{gw.url}/v1/chat/completions", json=chat(mine))
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    break
                await asyncio.sleep(0.2)
        served = time.monotonic() - began
        assert statuses[-1] == 200 and answer.json()["id"] == mine, statuses
        assert statuses[0] == 503, statuses  # the tricklers did hold every slot at first
        assert served < BODY_TIMEOUT + SLACK, f"served after {served:.1f}s"
        for took, received in await asyncio.gather(*tricklers):
            assert BODY_TIMEOUT <= took < BODY_TIMEOUT + SLACK, f"closed after {took:.1f}s"
            assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert await gw.serves()
