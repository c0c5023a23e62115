"""An engine that fails to start, times out or crashes: `failed`, and the neuron serves on."""

from __future__ import annotations

import asyncio
import os
import signal

from neuron_testing import fake_harness, running, settings_for, wait_gone


async def test_bad_source_fails_with_a_readable_error_and_the_neuron_keeps_serving() -> None:
    async with running(settings_for()) as neuron:
        response = await neuron.load("broken", source="/nonexistent/model")
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "engine_failed"
        assert "exited with status 1 while starting" in error["message"]
        assert "model source not found: /nonexistent/model" in error["message"]

        info = (await neuron.models())["broken"]
        assert info["status"] == "failed"
        assert "model source not found" in info["error"].splitlines()[0]

        chat = await neuron.client.post("/v1/chat/completions", json={"model": "broken"})
        assert chat.status_code == 404
        assert "model source not found" in chat.json()["error"]["message"]

        # Still serving: another model loads, and the failed one can be retried or cleared.
        assert (await neuron.load("fine")).status_code == 200
        assert (await neuron.client.get("/health")).json()["status"] == "ready"
        unloaded = await neuron.client.post("/models/unload", json={"model_id": "broken"})
        assert unloaded.json()["status"] == "unloaded"
        assert neuron.neuron.metrics.load_failures.labels("broken")._value.get() == 1


async def test_an_engine_that_never_gets_healthy_times_out() -> None:
    harness = fake_harness(FAKE_ENGINE_STARTUP_DELAY="30")
    harness.startup_timeout = 1.0
    async with running(settings_for(harness={"vllm": harness})) as neuron:
        response = await neuron.load("sleepy")
        assert response.status_code == 502
        assert "was not healthy after 1s" in response.json()["error"]["message"]
        info = (await neuron.models())["sleepy"]
        assert info["status"] == "failed"
        assert await wait_gone(info["engine"]["pid"], timeout=2.0)


async def test_an_engine_that_exits_on_its_own_turns_failed() -> None:
    settings = settings_for(harness={"vllm": fake_harness(FAKE_ENGINE_EXIT_AFTER="0.5")})
    async with running(settings) as neuron:
        assert (await neuron.load("crashy")).status_code == 200
        for _ in range(60):
            info = (await neuron.models())["crashy"]
            if info["status"] == "failed":
                break
            await asyncio.sleep(0.1)
        assert info["status"] == "failed"
        assert info["error"].startswith("engine exited with status 7")
        chat = await neuron.client.post("/v1/chat/completions", json={"model": "crashy"})
        assert chat.status_code == 404
        exits = neuron.neuron.metrics.engine_exits.labels("crashy", "crashed")._value.get()
        assert exits == 1


async def test_kill_9_of_an_engine_turns_its_model_failed(neuron) -> None:  # type: ignore[no-untyped-def]
    pid = (await neuron.load("victim")).json()["model"]["engine"]["pid"]
    os.killpg(pid, signal.SIGKILL)
    for _ in range(60):
        info = (await neuron.models())["victim"]
        if info["status"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert info["status"] == "failed"
    assert info["error"].startswith("engine exited with status -9")
    assert (await neuron.load("victim")).status_code == 200  # a new load replaces it
