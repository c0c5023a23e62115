"""A neuron SIGSTOP'd mid-service (the kernel still accepts its connections; nothing answers):
every client gets a definite answer within ``idle_timeout``, ``/health`` stays quick, the
neuron is marked down and traffic moves to the other one; after SIGCONT it comes back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from chaos_support import chat, cortex, neuron, nonce

IDLE = 2.0


def _up(fleet: dict[str, Any], name: str) -> bool:
    return bool(next(n for n in fleet["neurons"] if n["name"] == name)["up"])


async def test_stopped_neuron(tmp_path: Path) -> None:
    with (
        neuron(tmp_path, "n1") as n1,
        neuron(tmp_path, "n2") as n2,
        cortex(tmp_path, [n1, n2], gateway={"idle_timeout": IDLE}) as gw,
    ):
        async with httpx.AsyncClient(base_url=gw.url, timeout=IDLE + 10) as client:

            async def ask() -> int:
                mine = nonce()
                began = time.monotonic()
                answer = await client.post("/v1/chat/completions", json=chat(mine))
                assert time.monotonic() - began < IDLE + 2, "no definite answer in time"
                if answer.status_code == 200:
                    assert answer.json()["id"] == mine
                else:
                    assert answer.status_code == 504, answer.text
                return answer.status_code

            n2.stop_signal()
            stopped = time.monotonic()
            while _up(await gw.fleet(), "n2"):
                assert time.monotonic() - stopped < 10, "the stopped neuron is never marked down"
                await asyncio.gather(*(ask() for _ in range(4)))
                began = time.monotonic()
                assert (await client.get("/health")).status_code == 200
                assert time.monotonic() - began < 1
            # Marked down: everything goes to n1 now.
            assert await asyncio.gather(*(ask() for _ in range(20))) == [200] * 20

            n2.cont_signal()
            continued = time.monotonic()
            while not _up(await gw.fleet(), "n2"):
                assert time.monotonic() - continued < 10, "the neuron never comes back"
                await asyncio.sleep(0.2)
            assert await asyncio.gather(*(ask() for _ in range(20))) == [200] * 20
        assert gw.alive()
