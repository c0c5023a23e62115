"""Answers cortex reads with aiohttp (polls, loads, unloads) are read no further than
``poll.max_answer_bytes`` (issue 20, item 3): declared or sent, the connection closes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from scripted import read_request, scripted

from cortex.app import build
from cortex.settings import Catalogue, CortexSettings
from cortex.upstream.client import TooLarge, read_at_most

LIMIT = 1 << 20


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, declared: bool) -> None:
    await reader.readuntil(b"\r\n\r\n")
    if declared:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000000\r\n\r\n[")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    sent = 0
    while sent < 64 * LIMIT:  # far more than the limit, never all of it read
        writer.write(b" " * 65536 if declared else piece)
        await writer.drain()
        sent += 65536


@pytest.mark.parametrize("declared", [True, False])
async def test_an_answer_over_the_limit_is_cut_off(declared: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await huge(reader, writer, declared)

    async with scripted(handler) as base, aiohttp.ClientSession() as session:
        async with session.get(base + "/models") as response:
            with pytest.raises(TooLarge, match="over 1048576"):
                await read_at_most(response, LIMIT)
        assert response.closed


async def test_an_answer_within_the_limit_is_read_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (LIMIT, b"x" * LIMIT))
        await writer.drain()

    async with scripted(handler) as base, aiohttp.ClientSession() as session:
        async with session.get(base + "/models") as response:
            assert await read_at_most(response, LIMIT) == b"x" * LIMIT


async def test_an_idle_sleeps_answer_over_the_limit_is_a_failed_sleep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A whole, well-formed "asleep" answer, only longer than poll.max_answer_bytes.
    answer = json.dumps({"status": "asleep", "pad": "x" * 4096}).encode()
    asked: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()

    async with scripted(handler) as base:
        settings = CortexSettings(
            neurons=[{"name": "n1", "endpoint": base}], poll={"max_answer_bytes": 1024}
        )
        gateway = build(settings, Catalogue(models=[]))
        try:
            node = gateway.fleet.node("n1")
            node.evicting.add("m")
            await gateway.loader.housekeeper._idle_sleep(node, "m", 120.0, 60.0, node.instance)
        finally:
            await gateway.session.close()
    assert len(asked) == 1 and b"/models/sleep" in asked[0]  # no unload after it either
    assert "m" not in node.evicting
    assert "idle sleep of m on n1 failed: answer of" in caplog.text
    assert gateway.metrics.sleeps.labels("m", "n1", "idle")._value.get() == 0.0
