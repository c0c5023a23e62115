"""A neuron that sends without end, or too much (issue 20, items 2 and 3): each such answer
fails that request with a clear 502 (or one in-band error event once a stream has begun),
cortex's memory stays bounded, and /health keeps answering while it happens."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from chaos_support import chat, cortex, neuron, nonce

MIB = 1024


def clean(log: str) -> None:
    assert "ERROR" not in log and "Traceback" not in log, log[-3000:]


async def test_endless_headers_and_a_huge_answer_are_502s_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    with (
        neuron(tmp_path, "n1", mode="endless_head") as n1,
        cortex(tmp_path, [n1], gateway={"upstream_max_answer_bytes": 16 << 20}) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
            baseline = gw.rss_kib()
            for _ in range(3):
                started = time.monotonic()
                answer = await client.post("/v1/chat/completions", json=chat(nonce()))
                assert answer.status_code == 502
                assert "head is over 65536 bytes" in answer.json()["error"]["message"]
                assert time.monotonic() - started < 2
            grown = gw.rss_kib() - baseline
            assert grown < 50 * MIB, f"RSS grew {grown} KiB over 3 endless heads"

            await n1.script(mode="huge", size=1 << 30)  # a 1 GiB answer
            for _ in range(2):
                answer = await client.post("/v1/chat/completions", json=chat(nonce()))
                assert answer.status_code == 502
                message = answer.json()["error"]["message"]
                assert "1073741824 bytes, over 16777216" in message
            grown = gw.rss_kib() - baseline
            assert grown < 50 * MIB, f"RSS grew {grown} KiB over two 1 GiB answers"
        clean(gw.log())


async def test_an_endless_event_ends_its_stream_and_health_stays_quick(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1", mode="endless_event") as n1,
        cortex(tmp_path, [n1], gateway={"upstream_max_event_bytes": 32 << 20}) as gw,
    ):
        baseline = gw.rss_kib()
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            stream = asyncio.ensure_future(
                client.post("/v1/chat/completions", json=chat(nonce(), stream=True))
            )
            slowest = 0.0
            while not stream.done():
                started = time.monotonic()
                assert (await client.get("/health")).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.1)
            answer = await stream
        assert slowest < 2, f"/health took {slowest:.2f}s while the event grew"
        assert answer.status_code == 200
        events = [e for e in answer.content.split(b"\n\n") if e]
        assert len(events) == 2  # the one whole event, then the error
        error = json.loads(events[-1].removeprefix(b"data: "))["error"]
        assert "an event is over 33554432 bytes" in error["message"]
        grown = gw.rss_kib() - baseline
        assert grown < 100 * MIB, f"RSS grew {grown} KiB for one 32 MiB event"
        await asyncio.sleep(0.5)
        assert (await n1.astats())["streams_cut"] == 1  # that upstream connection closed
        clean(gw.log())


async def test_a_huge_models_answer_fails_the_poll_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    with neuron(tmp_path, "n1") as n1, cortex(tmp_path, [n1], poll={"timeout": 3.0}) as gw:
        baseline = gw.rss_kib()
        await n1.script(models_size=300 << 20)  # 300 MiB, every poll
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            node = (await gw.fleet())["neurons"][0]
            if not node["up"]:
                break
            await asyncio.sleep(0.2)
        assert not node["up"]
        assert "/models: answer of 314572800 bytes, over 8388608" in node["error"], node
        grown = gw.rss_kib() - baseline
        assert grown < 50 * MIB, f"RSS grew {grown} KiB over polls of 300 MiB answers"
        await n1.script(models_size=None)
        deadline = time.monotonic() + 10
        while not (await gw.fleet())["neurons"][0]["up"]:
            assert time.monotonic() < deadline, "the neuron did not come back"
            await asyncio.sleep(0.2)
        clean(gw.log())
