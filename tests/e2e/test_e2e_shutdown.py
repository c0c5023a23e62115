"""A graceful stop (SIGTERM) with a stream in flight, real vLLM: the stream finishes,
newcomers get 503 ``shutting_down``, the neuron exits 0 and no engine is left.

The neuron is the session's ``defaults_neuron`` (defaults ``broken`` and ``tiny``), which the
activation and prefix tests used before: this file sorts after theirs, so stopping it costs
no engine start (run alone, it starts the neuron first).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest
from e2e_support import (
    STREAM_TOKENS,
    SharedNeuron,
    async_wait_group_gone,
    chat_body,
    client,
    engine_groups,
    list_models,
    record,
    sse_data,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_sigterm_finishes_stream_refuses_newcomers_and_exits_clean(
    defaults_neuron: SharedNeuron,
) -> None:
    neuron = await asyncio.to_thread(defaults_neuron.ready)
    body = chat_body(
        "tiny",
        max_tokens=STREAM_TOKENS,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    async with client(neuron) as c, client(neuron) as other:
        models = await list_models(c, neuron)
        groups = {models["tiny"]["engine"]["pid"]} | engine_groups(neuron.pid)
        assert len(groups) >= 1
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
            refused = await other.post("/v1/chat/completions", json=chat_body("tiny"))
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
    record("SIGTERM → neuron exit (stream in flight)", took)
    print(f"SIGTERM to exit: {took:.1f}s")  # noqa: T201 - the number the report asks for
    assert code == 0, f"neuron exited with status {code}"
    for pgid in groups:
        assert await async_wait_group_gone(pgid, timeout=1) is not None, f"engine {pgid} left"
    assert engine_groups(neuron.pid) == set()
    log = neuron.log()
    assert "neuron stopped" in log
    assert re.search(r"unloaded \d+ model\(s\)", log)
    defaults_neuron.close()  # stopped: the next user, if any, starts a new one
