"""A neuron whose answers are garbage, cut short or never come: every client gets a definite
answer (an error envelope, or an in-band error event once a stream has begun) within a bound,
never a hang, never a 500, and cortex goes on serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from chaos_support import CortexProcess, NeuronProcess, chat, cortex, neuron, nonce

IDLE = 2.0
"""``gateway.idle_timeout``: how long cortex waits for a silent neuron."""


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NeuronProcess, CortexProcess]]:
    tmp = tmp_path_factory.mktemp("broken")
    with neuron(tmp, "n1") as n1, cortex(tmp, [n1], gateway={"idle_timeout": IDLE}) as gw:
        yield n1, gw


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("garbage", 502, "upstream_error"),
        ("truncate", 502, "upstream_error"),
        ("close_after_body", 502, "upstream_error"),
        ("silence", 504, "upstream_timeout"),
    ],
)
async def test_whole_answer(
    fleet: tuple[NeuronProcess, CortexProcess], mode: str, status: int, code: str
) -> None:
    n1, gw = fleet
    await n1.script(mode=mode)
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=IDLE + 10) as client:
            began = time.monotonic()
            answer = await client.post("/v1/chat/completions", json=chat(nonce()))
            took = time.monotonic() - began
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code
        assert took < IDLE + 3
    finally:
        await n1.script(mode="good")
    await _still_serves(gw)


@pytest.mark.parametrize("mode", ["truncate_stream", "silence_after_head"])
async def test_stream_cut_short(fleet: tuple[NeuronProcess, CortexProcess], mode: str) -> None:
    n1, gw = fleet
    await n1.script(mode=mode, chunks=5)
    mine = nonce()
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=IDLE + 10) as client:
            began = time.monotonic()
            body = chat(mine, stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                assert answer.status_code == 200
                events = [line[6:] async for line in answer.aiter_lines() if line[:6] == "data: "]
            took = time.monotonic() - began
    finally:
        await n1.script(mode="good", chunks=3)
    assert took < IDLE + 3
    assert events, "the stream ended without a single event"
    *relayed, last = events
    assert all(json.loads(e)["id"] == mine for e in relayed)
    assert "[DONE]" not in events  # the client must not believe the answer was complete
    assert json.loads(last)["error"]["type"] == "api_error", last
    await _still_serves(gw)


async def _still_serves(gw: CortexProcess) -> None:
    assert await gw.serves()
    mine = nonce()
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        answer = await client.post("/v1/chat/completions", json=chat(mine))
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == mine
    assert gw.alive()
