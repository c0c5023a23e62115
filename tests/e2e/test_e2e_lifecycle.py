"""A neuron with default models, from activation to a graceful stop (SIGTERM), real vLLM.

Defaults: ``broken`` (its engine exits while starting), then ``tiny`` and ``tiny-b``. The
first default failing must not stop the next ones. SIGTERM with a stream in flight: the
stream finishes, newcomers get 503 ``shutting_down``, the neuron exits 0 and no engine
is left. The tests run in file order on one neuron (module scope).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    ENGINE_START_TIMEOUT,
    STREAM_TOKENS,
    NeuronProcess,
    async_wait_group_gone,
    broken_spec,
    chat_body,
    client,
    engine_groups,
    free_port,
    list_models,
    neuron_running,
    record,
    sse_data,
    tiny_spec,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SERVED = ("tiny", "tiny-b")


@pytest.fixture(scope="module")
def neuron(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    defaults = [broken_spec()] + [tiny_spec(tiny_model, model_id) for model_id in SERVED]
    config = write_config(tmp / "neuron.toml", port=free_port(), default_models=defaults)
    with neuron_running(config, tmp / "neuron.log") as running:
        yield running


async def test_activation_loads_defaults_past_a_failure(neuron: NeuronProcess) -> None:
    async with client(neuron) as c:
        # Right after start: the first default (broken) takes seconds to fail.
        health = (await c.get("/health")).json()
        assert health["status"] == "activating"
        models = await list_models(c, neuron)
        assert models["tiny"]["status"] == "loading"
        assert models["broken"]["status"] == "loading"
        early = await c.post("/v1/chat/completions", json=chat_body("tiny"))
        assert early.status_code == 503, early.text
        assert early.json()["error"]["code"] == "model_loading"
        assert "Retry-After" in early.headers

        deadline = time.monotonic() + ENGINE_START_TIMEOUT * (len(SERVED) + 1)
        while (await c.get("/health")).json()["status"] != "ready":
            neuron.check_running()
            assert time.monotonic() < deadline, f"not ready: {await list_models(c, neuron)}"
            await asyncio.sleep(0.5)
        record(f"activation: broken + {' + '.join(SERVED)}", time.monotonic() - neuron.started)

        models = await list_models(c, neuron)
        assert models["broken"]["status"] == "failed"
        assert "nonexistent" in models["broken"]["error"]
        for model_id in SERVED:
            assert models[model_id]["status"] == "ready", models[model_id]
            served = await c.post("/v1/chat/completions", json=chat_body(model_id))
            assert served.status_code == 200, served.text

    log = neuron.log()
    assert re.search(r"WARNING neuron\.lifecycle: default model broken failed to load", log)
    for model_id in SERVED:
        ready = re.search(
            rf"INFO neuron\.lifecycle: default model {model_id} ready in ([\d.]+)s", log
        )
        assert ready, f"no 'default model {model_id} ready in' line in the log"
        record(f"engine start: {model_id} (default model)", float(ready.group(1)))


async def test_sigterm_finishes_stream_refuses_newcomers_and_exits_clean(
    neuron: NeuronProcess,
) -> None:
    await asyncio.to_thread(neuron.wait_ready, ENGINE_START_TIMEOUT * (len(SERVED) + 1))
    body = chat_body(
        "tiny",
        max_tokens=STREAM_TOKENS,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    async with client(neuron) as c, client(neuron) as other:
        models = await list_models(c, neuron)
        groups = {models[m]["engine"]["pid"] for m in SERVED} | engine_groups(neuron.pid)
        assert len(groups) >= len(SERVED)
        assert (await other.get("/health")).json()["in_flight"] == 0

        async def consume() -> tuple[int, list[str]]:
            async with c.stream("POST", "/v1/chat/completions", json=body) as response:
                return response.status_code, [line async for line in response.aiter_lines()]

        # SIGTERM once the neuron is relaying the stream. Not "after the first chunk": a
        # starved vLLM may send every chunk in one burst at the end. The engine needs
        # STREAM_TOKENS steps (seconds) from here whatever its API server does.
        stream = asyncio.create_task(consume())
        try:
            began = time.monotonic()
            while (await other.get("/health")).json()["in_flight"] < 1:
                assert not stream.done(), "the stream ended before the neuron counted it"
                assert time.monotonic() - began < 30, "the stream never reached the engine"
                await asyncio.sleep(0.01)
            os.kill(neuron.pid, signal.SIGTERM)
            sigterm = time.monotonic()
            while (health := (await other.get("/health")).json())["status"] != "draining":
                assert time.monotonic() - sigterm < 5, "no drain 5 s after SIGTERM"
                await asyncio.sleep(0.02)
            assert health["in_flight"] == 1, "the stream should still be in flight"
            refused = await other.post("/v1/chat/completions", json=chat_body("tiny-b"))
            control = await other.get("/models")
            status, received = await stream
        finally:
            stream.cancel()  # only if a check above failed

    assert status == 200
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "shutting_down"
    assert int(refused.headers["Retry-After"]) > 0
    assert control.status_code == 503
    assert control.json()["error"]["code"] == "shutting_down"

    data = sse_data(received)
    assert data[-1] == "[DONE]", f"stream cut off: {data[-3:]}"
    usage = [json.loads(d)["usage"] for d in data[:-1] if json.loads(d).get("usage")]
    assert usage, "no usage chunk"
    assert usage[-1]["completion_tokens"] == STREAM_TOKENS, "the generation was cut short"

    code = await asyncio.to_thread(neuron.proc.wait, 150)
    took = time.monotonic() - sigterm
    record(f"SIGTERM → neuron exit ({len(SERVED)} engines, stream in flight)", took)
    print(f"SIGTERM to exit: {took:.1f}s")  # noqa: T201 - the number the report asks for
    assert code == 0, f"neuron exited with status {code}"
    for pgid in groups:
        assert await async_wait_group_gone(pgid, timeout=1) is not None, f"engine {pgid} left"
    assert engine_groups(neuron.pid) == set()
    log = neuron.log()
    assert "neuron stopped" in log
    assert re.search(r"unloaded \d+ model\(s\)", log)
