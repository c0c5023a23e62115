"""Concurrent loads of one model share one engine start; unload while loading cancels it."""

from __future__ import annotations

import asyncio

from neuron_testing import alive, fake_harness, running, settings_for, wait_gone


async def test_concurrent_loads_start_one_engine() -> None:
    settings = settings_for(harness={"vllm": fake_harness(FAKE_ENGINE_STARTUP_DELAY="1.0")})
    async with running(settings) as neuron:
        answers = await asyncio.gather(*(neuron.load("m1") for _ in range(5)))
        assert [a.status_code for a in answers] == [200] * 5
        pids = {a.json()["model"]["engine"]["pid"] for a in answers}
        assert len(pids) == 1
        assert neuron.neuron.metrics.engine_exits.labels("m1", "stopped")._value.get() == 0


async def test_unload_while_loading_cancels_the_start() -> None:
    settings = settings_for(harness={"vllm": fake_harness(FAKE_ENGINE_STARTUP_DELAY="30")})
    async with running(settings) as neuron:
        load = asyncio.create_task(neuron.load("slow"))
        for _ in range(100):
            models = await neuron.models()
            if models.get("slow", {}).get("engine", {}).get("pid"):
                break
            await asyncio.sleep(0.05)
        assert models["slow"]["status"] == "loading"
        pid = models["slow"]["engine"]["pid"]
        assert alive(pid)

        chat = await neuron.client.post("/v1/chat/completions", json={"model": "slow"})
        assert chat.status_code == 503
        assert chat.headers["retry-after"]
        assert chat.json()["error"]["code"] == "model_loading"

        unload = await neuron.client.post("/models/unload", json={"model_id": "slow"})
        assert unload.status_code == 200
        response = await load
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "load_cancelled"
        assert await wait_gone(pid, timeout=2.0)
        assert await neuron.models() == {}
