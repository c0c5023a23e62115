"""cortex → neuron → vLLM, end to end, through the official OpenAI and Anthropic clients.

The session's shared neuron (the tiny model as its default), one `cortex serve` in front that
knows it by host name (``localhost``). Then the neuron is killed by SIGKILL mid-stream: the
client gets an in-band error, cortex turns degraded, and the neuron's engine does not outlive
it. Started again (the shared neuron's restart, which the tests after this one use), it is
found again by cortex on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from anthropic import AsyncAnthropic
from e2e_support import (
    ABORT_TOKENS,
    SharedNeuron,
    async_wait_group_gone,
    cortex_serving,
    engine_groups,
    engine_metric,
    prometheus_value,
    record,
    wait_until,
)
from openai import AsyncOpenAI

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ORPHAN_DEADLINE = 20.0
"""Seconds the engines of a neuron killed by SIGKILL may outlive it (their guard's doing)."""


async def test_clients_through_cortex_and_a_neuron_that_dies_and_returns(
    shared_neuron: SharedNeuron, tmp_path: Path
) -> None:
    began = time.monotonic()
    neuron = shared_neuron.ready()
    try:
        record("gateway: shared neuron ready", time.monotonic() - began)
        # By host name, as a fleet names its hosts: the poller and the relay both look it up.
        by_name = neuron.url.replace("127.0.0.1", "localhost")
        with cortex_serving(tmp_path, "cortex", {"n1": by_name}) as (api, metrics_url):
            async with (
                contextlib.AsyncExitStack() as stack,
                httpx.AsyncClient(base_url=api, timeout=60) as raw,
            ):

                async def tiny_ready() -> bool:
                    data = (await raw.get("/v1/models")).json()["data"]
                    return any(
                        m["id"] == "tiny" and {"node": "n1", "status": "ready"} in m["locations"]
                        for m in data
                    )

                await wait_until(tiny_ready, 30, "cortex to see tiny ready")

                openai = AsyncOpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)
                anthropic = AsyncAnthropic(base_url=api, api_key="unused", max_retries=0)
                await stack.enter_async_context(openai)
                await stack.enter_async_context(anthropic)
                assert "tiny" in [m.id async for m in openai.models.list()]
                chat = await openai.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8
                )
                assert chat.choices[0].message.role == "assistant"
                assert chat.usage is not None and chat.usage.completion_tokens > 0

                stream = await openai.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=8,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [chunk async for chunk in stream]
                assert chunks[-1].usage is not None
                assert chunks[-1].usage.completion_tokens == 8

                async with anthropic.messages.stream(
                    model="tiny", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                ) as messages:
                    events = [event.type async for event in messages]
                    final = await messages.get_final_message()
                assert events[0] == "message_start" and events[-1] == "message_stop"
                assert final.usage.output_tokens > 0

                scraped = (await raw.get(metrics_url)).text
                ok = prometheus_value(
                    scraped,
                    "cortex_requests_total",
                    model="tiny",
                    node="n1",
                    endpoint="/v1/chat/completions",
                    status="200",
                )
                assert ok == 2
                completion = prometheus_value(
                    scraped, "cortex_completion_tokens_total", model="tiny"
                )
                assert completion is not None and completion >= 16
                assert prometheus_value(scraped, "cortex_neuron_up", node="n1") == 1

                # A client that goes away mid-stream: cortex → neuron → vLLM, and vLLM aborts.
                engine_url = neuron.models()["tiny"]["engine"]["url"]
                long = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": ABORT_TOKENS,
                    "ignore_eos": True,
                    "stream": True,
                }
                async with httpx.AsyncClient(base_url=engine_url, timeout=30) as engine:
                    before = await engine_metric(engine, "vllm:generation_tokens_total", "tiny")
                    async with raw.stream("POST", "/v1/chat/completions", json=long) as r:
                        lines = r.aiter_lines()
                        for _ in range(3):
                            await anext(lines)
                    closed = time.monotonic()

                    async def engine_idle() -> bool:
                        running = await engine_metric(engine, "vllm:num_requests_running", "tiny")
                        return running == 0

                    await wait_until(engine_idle, 30, "vLLM to abort the abandoned stream")
                    record("client leaves cortex → engine idle", time.monotonic() - closed)
                    after = await engine_metric(engine, "vllm:generation_tokens_total", "tiny")
                assert after - before < ABORT_TOKENS / 2, (
                    "the generation ran on after the client left"
                )

                # A client that gives up waiting for a whole answer: no byte has come back
                # yet, and the same chain still stops the generation.
                async with httpx.AsyncClient(base_url=engine_url, timeout=30) as engine:
                    before = await engine_metric(engine, "vllm:generation_tokens_total", "tiny")
                    with contextlib.suppress(httpx.ReadTimeout):  # closes the connection
                        await raw.post(
                            "/v1/chat/completions", json={**long, "stream": False}, timeout=1.5
                        )
                    closed = time.monotonic()
                    await wait_until(engine_idle, 30, "vLLM to abort the abandoned whole answer")
                    record("client leaves a whole answer → engine idle", time.monotonic() - closed)
                    after = await engine_metric(engine, "vllm:generation_tokens_total", "tiny")
                assert after > before, "the whole answer never started"
                assert after - before < ABORT_TOKENS / 2, (
                    "the whole answer ran on after the client left"
                )

                # The neuron dies mid-stream: one in-band error event, then the stream ends.
                engines = [m["engine"]["pid"] for m in neuron.models().values()]
                assert engine_groups(neuron.pid) == set(engines)
                async with raw.stream("POST", "/v1/chat/completions", json=long) as response:
                    lines = response.aiter_lines()
                    for _ in range(3):
                        await anext(lines)
                    neuron.proc.send_signal(signal.SIGKILL)
                    rest = [line async for line in lines if line.startswith("data: ")]
                assert rest, "the stream ended without a word"
                error = json.loads(rest[-1].removeprefix("data: "))
                assert error["error"]["code"] == "upstream_error"
                # Killed with no chance to clean up, it leaves no engine behind (the guard).
                assert await asyncio.to_thread(neuron.proc.wait, 10) == -signal.SIGKILL
                for pgid in engines:
                    gone = await async_wait_group_gone(pgid, ORPHAN_DEADLINE)
                    assert gone is not None, f"engine group {pgid} outlived its neuron"
                    record("neuron SIGKILL → orphaned engine group gone", gone)
                assert engine_groups(neuron.pid) == set()
                async with httpx.AsyncClient(timeout=5) as direct:
                    with pytest.raises(httpx.TransportError):
                        await direct.get(f"{engine_url}/health")

                async def degraded() -> bool:
                    return bool((await raw.get("/health")).json()["status"] == "degraded")

                await wait_until(degraded, 15, "cortex /health to turn degraded")
                scraped = (await raw.get(metrics_url)).text
                assert prometheus_value(scraped, "cortex_neuron_up", node="n1") == 0

                # Started again, it is found again without touching cortex.
                began = time.monotonic()
                neuron = await asyncio.to_thread(shared_neuron.restart)
                record("gateway: engine start after neuron restart", time.monotonic() - began)
                await wait_until(tiny_ready, 30, "cortex to see tiny ready again")
                assert (await raw.get("/health")).json()["status"] == "ok"
                again = await openai.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                assert again.usage is not None and again.usage.completion_tokens == 4
    except BaseException:
        # Whatever state the failure left it in, the next test that shares it gets a new one.
        shared_neuron.close()
        raise
