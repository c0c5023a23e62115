"""SIGTERM/SIGINT to a real neuron: in-flight streams finish, new work gets 503, engines go."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from neuron_testing import NeuronProcess, alive, fake_engine_config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_then_unloads_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    neuron = NeuronProcess(tmp_path, fake_engine_config("m1", "m2", FAKE_ENGINE_CHUNK_DELAY="0.02"))
    proc = neuron.start()
    try:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=30) as client:
            await neuron.wait_ready(client)
            pids = [m["engine"]["pid"] for m in (await client.get("/models")).json()]
            assert len(pids) == 2 and all(alive(p) for p in pids)

            body = {"model": "m1", "stream": True, "max_tokens": 100}  # about 2 s of chunks
            async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                assert first.startswith("data: ")
                proc.send_signal(sig)
                signalled = time.monotonic()
                await asyncio.sleep(0.2)

                async with httpx.AsyncClient(base_url=neuron.url, timeout=5) as other:
                    refused = await other.post("/v1/chat/completions", json={"model": "m2"})
                    assert refused.status_code == 503
                    assert refused.headers["retry-after"] == "10"
                    assert refused.json()["error"]["code"] == "shutting_down"
                    health = await other.get("/health")
                    assert health.json()["status"] == "draining"

                rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            assert len(rest) == 100  # 99 more chunks and [DONE]: nothing was cut off

        returncode = await asyncio.to_thread(proc.wait, 30)
        elapsed = time.monotonic() - signalled
        assert returncode == 0, neuron.log.read_text()
        assert not any(alive(p) for p in pids)
        assert elapsed < 30
        log = neuron.log.read_text()
        assert f"{sig.name} received: draining" in log
        assert "unloaded 2 model(s)" in log
    finally:
        neuron.stop()


async def test_drain_timeout_bounds_a_stream_that_does_not_end(tmp_path: Path) -> None:
    config = fake_engine_config("m1", drain_timeout=1, FAKE_ENGINE_CHUNK_DELAY="0.1")
    neuron = NeuronProcess(tmp_path, config)
    proc = neuron.start()
    try:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=30) as client:
            await neuron.wait_ready(client)
            body = {"model": "m1", "stream": True, "max_tokens": 100000}
            async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
                lines = stream.aiter_lines()
                await anext(lines)
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                rest = [line async for line in lines if line]
            # Cut off after drain_timeout: the engine goes, the stream ends with an error event.
            assert rest[-2] == "event: error"
            assert '"code": "engine_unavailable"' in rest[-1]
            assert len(rest) < 1000
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert time.monotonic() - signalled < 15
        assert (
            "drain timeout (1s): 1 request(s) still in flight are cut off" in neuron.log.read_text()
        )
    finally:
        neuron.stop()


async def test_an_idle_neuron_without_models_stops_at_once(tmp_path: Path) -> None:
    neuron = NeuronProcess(tmp_path, fake_engine_config())
    proc = neuron.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await neuron.wait_ready(client)
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert time.monotonic() - began < 5
        assert "unloaded" not in neuron.log.read_text()
    finally:
        neuron.stop()


async def test_a_load_in_progress_does_not_hold_up_the_stop(tmp_path: Path) -> None:
    config = fake_engine_config(FAKE_ENGINE_STARTUP_DELAY="30")
    neuron = NeuronProcess(tmp_path, config)
    proc = neuron.start()
    try:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=60) as client:
            await neuron.wait_ready(client)
            load = asyncio.create_task(client.post("/models/load", json={"model_id": "slow"}))
            for _ in range(100):
                if (await client.get("/models")).json():
                    break
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            response = await load
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "load_cancelled"
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert time.monotonic() - signalled < 10  # not the 30 s the engine start would take
    finally:
        neuron.stop()
