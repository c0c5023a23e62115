"""One neuron, real vLLM: load, inference (OpenAI and Anthropic shapes), disconnect, failures.

The tests run on the session's shared neuron (``tiny`` is its default model) in file order;
each one (re)loads ``tiny`` first, which is instant while the engine is ready. One engine
start here: the reload, by two concurrent loads, after the engine is killed (the last test),
which the prefix test uses later.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    ABORT_TOKENS,
    NeuronProcess,
    SharedNeuron,
    broken_spec,
    chat_body,
    client,
    engine_groups,
    engine_metric,
    list_models,
    load,
    prometheus_value,
    record,
    sse_data,
    sse_events,
    tiny_spec,
    wait_for_model,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RUNNING_METRIC = "vllm:num_requests_running"
GENERATED_METRIC = "vllm:generation_tokens_total"
DISCONNECT_ATTEMPTS = 3


@pytest.fixture
def neuron(shared_neuron: SharedNeuron) -> NeuronProcess:
    return shared_neuron.ready()


async def ensure_tiny(c: httpx.AsyncClient, neuron: NeuronProcess, model: Path) -> dict[str, Any]:
    response = await load(c, neuron, tiny_spec(model))
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()["model"]
    assert info["status"] == "ready"
    return info


async def test_chat_completion(neuron: NeuronProcess, tiny_model: Path) -> None:
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        response = await c.post("/v1/chat/completions", json=chat_body("tiny", max_tokens=8))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_text_completion(neuron: NeuronProcess, tiny_model: Path) -> None:
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        response = await c.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Once upon a time", "max_tokens": 5}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert isinstance(body["choices"][0]["text"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= 5


async def test_the_engines_metrics_and_load_show_through_the_neuron(
    neuron: NeuronProcess, tiny_model: Path
) -> None:
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        response = await c.post("/v1/chat/completions", json=chat_body("tiny", max_tokens=4))
        assert response.status_code == 200, response.text
        scraped = (await c.get("/metrics")).text
        # /models is refreshed every health_interval (1 s on the shared neuron).
        deadline, info = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            info = (await list_models(c, neuron))["tiny"]
            if info.get("running") is not None:
                break
            await asyncio.sleep(0.5)
    assert prometheus_value(scraped, RUNNING_METRIC, model="tiny") == 0, scraped[:2000]
    assert prometheus_value(scraped, "vllm:num_requests_waiting", model="tiny") == 0
    kv = prometheus_value(scraped, "vllm:kv_cache_usage_perc", model="tiny")
    kv = (
        kv
        if kv is not None
        else prometheus_value(scraped, "vllm:gpu_cache_usage_perc", model="tiny")
    )
    assert kv is not None and 0 <= kv <= 1, scraped[:2000]
    assert (prometheus_value(scraped, GENERATED_METRIC, model="tiny") or 0) >= 1
    assert (info["running"], info["waiting"]) == (0, 0), info
    assert isinstance(info["kv_cache_usage"], float) and 0 <= info["kv_cache_usage"] <= 1, info
    # The engine's access log (in the neuron's log) has the request, not the neuron's polls.
    access = [
        line
        for line in neuron.log().splitlines()
        if "neuron.engine: [tiny]" in line and " HTTP/1.1" in line
    ]
    assert [line for line in access if '"POST /v1/chat/completions HTTP/1.1" 200' in line]
    assert not [line for line in access if "GET /metrics " in line or "GET /health " in line]


CHAT_ACCESS = re.compile(
    r'neuron\.engine: \[tiny\] .*127\.0\.0\.1:(\d+) - "POST /v1/chat/completions '
)


async def test_the_engine_keeps_an_idle_connection_past_vllms_default(
    neuron: NeuronProcess, tiny_model: Path
) -> None:
    # The neuron sets VLLM_HTTP_TIMEOUT_KEEP_ALIVE above its own pool's keep-alive: a real
    # vLLM keeps the neuron's connection open past its default 5 s, so the neuron never sends
    # a request on a connection the engine is closing (which was a 502).
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        before = len(CHAT_ACCESS.findall(neuron.log()))
        for pause in (0.0, 5.5):
            await asyncio.sleep(pause)
            response = await c.post("/v1/chat/completions", json=chat_body("tiny", max_tokens=2))
            assert response.status_code == 200, response.text
    deadline, ports = time.monotonic() + 10, []
    while time.monotonic() < deadline and len(ports) < 2:  # the log arrives through a pipe
        ports = CHAT_ACCESS.findall(neuron.log())[before:]
        await asyncio.sleep(0.1)
    assert len(ports) == 2 and ports[0] == ports[1], ports


async def test_streaming_chat_with_usage(neuron: NeuronProcess, tiny_model: Path) -> None:
    body = chat_body("tiny", max_tokens=8, stream=True, stream_options={"include_usage": True})
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        async with c.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines()]
    data = sse_data(lines)
    assert data, f"no SSE data lines in {lines!r}"
    assert data[-1] == "[DONE]", f"stream did not end with [DONE]: {data[-3:]}"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [choice["delta"] for chunk in chunks for choice in chunk["choices"]]
    assert any(delta.get("content") for delta in deltas), "no content streamed"
    usages = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    assert usages, "include_usage asked for a usage chunk"
    assert 1 <= usages[-1]["completion_tokens"] <= 8


async def test_anthropic_messages(neuron: NeuronProcess, tiny_model: Path) -> None:
    body = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        response = await c.post("/v1/messages", json=body)
        assert response.status_code == 200, response.text
        message = response.json()
        assert message["type"] == "message"
        assert message["role"] == "assistant"
        assert isinstance(message["content"], list)
        assert message["content"]
        assert message["content"][0]["type"] == "text"
        assert message["usage"]["output_tokens"] <= 8

        async with c.stream("POST", "/v1/messages", json={**body, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in streamed.aiter_lines()]
    events = sse_events(lines)
    assert events[0] == "message_start", events
    assert events[-1] == "message_stop", events
    assert "content_block_start" in events
    assert "content_block_delta" in events
    assert "message_delta" in events
    payloads = [json.loads(d) for d in sse_data(lines)]
    assert [p["type"] for p in payloads] == events


async def test_client_disconnect_aborts_generation(neuron: NeuronProcess, tiny_model: Path) -> None:
    """Closing a stream mid-way stops the engine's work, not just the relay."""
    max_tokens = ABORT_TOKENS
    body = chat_body("tiny", max_tokens=max_tokens, stream=True, ignore_eos=True)
    async with client(neuron) as c:
        info = await ensure_tiny(c, neuron, tiny_model)
        async with httpx.AsyncClient(base_url=info["engine"]["url"], timeout=30) as engine:
            attempt = 0
            while True:
                attempt += 1
                generated_before = await engine_metric(engine, GENERATED_METRIC, "tiny")
                async with c.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    chunks = 0
                    async for line in response.aiter_lines():
                        chunks += line.startswith("data:")
                        if chunks == 3:
                            break
                    running_while_streaming = await engine_metric(engine, RUNNING_METRIC, "tiny")
                closed = time.monotonic()  # leaving the block closed the connection mid-stream
                if running_while_streaming >= 1:
                    break
                # Inconclusive, not wrong: on a starved 2-core machine vLLM's API server may
                # answer /metrics only once the whole generation is over. Try again.
                if attempt == DISCONNECT_ATTEMPTS:
                    pytest.fail(
                        f"in {attempt} tries the engine never answered /metrics while a "
                        "stream was running: the machine is too busy for this test"
                    )
            tries = f" ({attempt} tries)" if attempt > 1 else ""

            running = await engine_metric(engine, RUNNING_METRIC, "tiny")
            while running > 0 and time.monotonic() - closed < 5:
                await asyncio.sleep(0.05)
                running = await engine_metric(engine, RUNNING_METRIC, "tiny")
            assert running == 0, "the engine kept generating 5 s after the client went away"
            record(f"client disconnect → engine idle{tries}", time.monotonic() - closed)

            # Without the abort the engine would produce all max_tokens (ignore_eos); the
            # idle gauge already says it stopped, the token count says it stopped early.
            generated = await engine_metric(engine, GENERATED_METRIC, "tiny") - generated_before
            assert generated < max_tokens / 2, f"{generated:g} tokens generated: not aborted"

        health = (await c.get("/health")).json()
        assert health["in_flight"] == 0
        metrics = (await c.get("/metrics")).text
        assert prometheus_value(metrics, "neuron_requests_total", model="tiny", status="499")


async def test_bad_source_fails_and_neuron_keeps_serving(
    neuron: NeuronProcess, tiny_model: Path
) -> None:
    async with client(neuron) as c:
        await ensure_tiny(c, neuron, tiny_model)
        began = time.monotonic()
        response = await load(c, neuron, broken_spec())
        record("failed engine start (bad source) → 502", time.monotonic() - began)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "engine_failed"
        assert error["type"] == "engine_error"
        first_line = error["message"].splitlines()[0]
        assert "exited with status 1" in first_line
        assert "nonexistent" in first_line or "Repo id" in first_line, first_line

        models = await list_models(c, neuron)
        assert models["broken"]["status"] == "failed"
        assert "nonexistent" in models["broken"]["error"]
        assert models["tiny"]["status"] == "ready"

        refused = await c.post("/v1/chat/completions", json=chat_body("broken"))
        assert refused.status_code == 404, refused.text
        assert "exited with status 1" in refused.json()["error"]["message"]

        served = await c.post("/v1/chat/completions", json=chat_body("tiny"))
        assert served.status_code == 200, served.text

        unloaded = await c.post("/models/unload", json={"model_id": "broken"})
        assert unloaded.status_code == 200, unloaded.text
        assert "broken" not in await list_models(c, neuron)


async def test_engine_killed_then_reloaded_by_concurrent_loads(
    neuron: NeuronProcess, tiny_model: Path
) -> None:
    """Two concurrent loads of the crashed model share one engine start (and one engine)."""
    async with client(neuron) as c:
        old = (await ensure_tiny(c, neuron, tiny_model))["engine"]["pid"]
        os.killpg(old, signal.SIGKILL)
        failed = await wait_for_model(c, neuron, "tiny", "failed", timeout=15)
        assert "exited with status" in failed["error"]
        refused = await c.post("/v1/chat/completions", json=chat_body("tiny"))
        assert refused.status_code == 404, refused.text
        assert "exited with status" in refused.json()["error"]["message"]
        metrics = (await c.get("/metrics")).text
        assert prometheus_value(
            metrics, "neuron_engine_exits_total", model="tiny", reason="crashed"
        )

        spec = tiny_spec(tiny_model)
        began = time.monotonic()
        first, second = await asyncio.gather(load(c, neuron, spec), load(c, neuron, spec))
        record(
            "engine start: tiny (reload after kill -9, two concurrent loads)",
            time.monotonic() - began,
        )
        assert first.status_code == 200, first.text
        assert second.status_code == 200, second.text
        for answer in (first, second):
            assert answer.json()["status"] == "loaded"
            assert answer.json()["model"]["status"] == "ready"
        new = first.json()["model"]["engine"]["pid"]
        assert second.json()["model"]["engine"]["pid"] == new, "two engines for one model"
        assert engine_groups(neuron.pid) == {new}, "exactly one engine process group"
        assert new != old
        models = await list_models(c, neuron)
        assert models["tiny"]["status"] == "ready"
        assert models["tiny"]["engine"]["pid"] == new
        assert models["tiny"]["error"] is None
        listed = (await c.get("/v1/models")).json()
        assert [m["id"] for m in listed["data"]] == ["tiny"]
        served = await c.post("/v1/chat/completions", json=chat_body("tiny"))
        assert served.status_code == 200, served.text
        # The reloaded engine stays for the tests after this one (prefix); unloading a
        # ready model is shown at the end of the on-demand test.
