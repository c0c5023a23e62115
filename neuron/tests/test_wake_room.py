"""The room a neuron makes on its own, when a request reaches it for a sleeping model: the
least recently used idle awake model goes to sleep, but never one of the neuron's default
models (its pins) nor one woken less than ``[sleep] min_residency`` ago."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from neuron_testing import Running, fake_harness, running, settings_for

from neuron.settings import Harnesses, ModelSpec, SleepSettings

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def one_awake(sleep: dict[str, Any] | None = None, **overrides: Any) -> Any:
    return settings_for(
        max_loaded_models=1,
        sleep=SleepSettings(**(sleep or {})),
        harness=Harnesses(vllm=fake_harness()),
        **overrides,
    )


async def chat(n: Running, model: str) -> httpx.Response:
    return await n.client.post("/v1/chat/completions", json={"model": model, **CHAT})


async def statuses(n: Running) -> dict[str, str]:
    return {m: i["status"] for m, i in (await n.models()).items()}


async def activated(n: Running) -> None:
    for _ in range(200):
        if (await n.client.get("/health")).json()["status"] == "ready":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the neuron never finished activating")


async def awake_and_asleep(n: Running, awake: str, asleep: str) -> None:
    """``awake`` ready, woken just now; ``asleep`` sleeping (as a command from cortex did)."""
    if asleep not in await n.models():
        assert (await n.load(asleep, evict=[awake])).status_code == 200
    woke = await n.client.post("/models/wake", json={"model_id": awake, "evict": [asleep]})
    assert woke.status_code == 200, woke.text
    assert await statuses(n) == {awake: "ready", asleep: "sleeping"}


async def test_a_default_model_is_never_put_to_sleep_for_a_request() -> None:
    async with running(one_awake(default_models=[ModelSpec(model_id="pin")])) as n:
        await activated(n)
        await awake_and_asleep(n, "pin", "other")
        answer = await chat(n, "other")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "cannot_wake"
        assert "pin kept awake" in answer.json()["error"]["message"]
        assert await statuses(n) == {"pin": "ready", "other": "sleeping"}
        # A command may still demote it: its sender decided that, with its own pins.
        woke = await n.client.post("/models/wake", json={"model_id": "other", "evict": ["pin"]})
        assert woke.status_code == 200
        assert await statuses(n) == {"pin": "sleeping", "other": "ready"}


async def test_a_model_just_woken_is_not_put_to_sleep_for_a_request_within_min_residency() -> None:
    async with running(one_awake({"min_residency": 1.5})) as n:
        await n.load("m1")
        await awake_and_asleep(n, "m1", "m2")
        refused = await chat(n, "m2")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "cannot_wake"
        assert await statuses(n) == {"m1": "ready", "m2": "sleeping"}
        await asyncio.sleep(1.6)
        answer = await chat(n, "m2")
        assert answer.status_code == 200, answer.text
        assert await statuses(n) == {"m1": "sleeping", "m2": "ready"}


async def test_without_min_residency_a_model_just_woken_makes_room() -> None:
    async with running(one_awake()) as n:
        await n.load("m1")
        await awake_and_asleep(n, "m1", "m2")
        assert (await chat(n, "m2")).status_code == 200
        assert await statuses(n) == {"m1": "sleeping", "m2": "ready"}
