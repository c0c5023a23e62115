"""The residency ladder end to end, with default settings: real cortex, a real neuron, real
vLLM engines (CPU: sleep frees nothing there, but every call of the control path is real).

One neuron with room for one awake model, two catalogued copies of the tiny model, ``a``
and ``b``. ``a``, then ``b`` (``a`` goes to sleep), then ``a`` again: its first token comes
within 3 s (a cold start here is about 50 s), and only two engines were ever started. Ten
concurrent requests for the sleeping ``b`` cause one wake. SIGTERM leaves no engine.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    ENGINE_START_TIMEOUT,
    async_wait_group_gone,
    chat_body,
    cortex_serving,
    free_port,
    neuron_running,
    prometheus_value,
    record,
    tiny_spec,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LOAD_WAIT = ENGINE_START_TIMEOUT + 60
FIRST_TOKEN_WITHIN = 3.0


def entry(model_dir: Path, model_id: str) -> dict[str, Any]:
    spec = tiny_spec(model_dir, model_id)
    return {"id": spec.pop("model_id"), **spec}


async def first_token(c: httpx.AsyncClient, model: str) -> float:
    """Seconds until the first token of a streamed answer for ``model``."""
    began = time.monotonic()
    body = chat_body(model, stream=True)
    async with c.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        took = None
        async for line in response.aiter_lines():
            if took is None and line.startswith("data:") and '"content"' in line:
                took = time.monotonic() - began
        assert took is not None
        return took


async def test_a_b_a_wakes_a_and_ten_requests_cause_one_wake(
    tiny_model: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "n1.toml", port=free_port(), max_loaded_models=1)
    a, b = entry(tiny_model, "a"), entry(tiny_model, "b")
    with neuron_running(config, tmp_path / "n1.log") as n1:
        loading = {"keepalive_interval": 1.0, "cold_start_timeout": LOAD_WAIT}
        with cortex_serving(tmp_path, "c1", {"n1": n1.url}, [a, b], loading) as (api, metrics):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:

                async def up() -> bool:
                    fleet = (await c.get("/fleet")).json()
                    return any(n["up"] for n in fleet["neurons"])

                await wait_until(up, 30, "cortex to see the neuron up")
                record("ladder: cold start of a", await first_token(c, "a"))
                record("ladder: cold start of b (a sleeps)", await first_token(c, "b"))
                models = n1.models()
                assert models["a"]["status"] == "sleeping", models
                assert models["a"]["sleep_level"] == 1
                assert models["b"]["status"] == "ready"

                took = await first_token(c, "a")
                record("ladder: a again (a wakes, b sleeps): first token", took)
                assert took < FIRST_TOKEN_WITHIN, f"first token after {took:.1f}s"
                models = n1.models()
                assert models["a"]["status"] == "ready" and models["b"]["status"] == "sleeping"

                answers = await asyncio.gather(
                    *(c.post("/v1/chat/completions", json=chat_body("b")) for _ in range(10))
                )
                assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]

                async with httpx.AsyncClient(timeout=30) as direct:
                    own = (await direct.get(f"{n1.url}/metrics")).text
                assert prometheus_value(own, "neuron_model_wakes_total", model="b") == 1
                assert prometheus_value(own, "neuron_model_wakes_total", model="a") == 1
                assert prometheus_value(own, "neuron_model_load_seconds_count") == 2
                assert prometheus_value(own, "neuron_engine_exits_total") is None
                assert (
                    prometheus_value(
                        own, "vllm:engine_sleep_state", model="a", sleep_state="weights_offloaded"
                    )
                    == 1
                )
                scraped = (await c.get(metrics)).text
                assert prometheus_value(scraped, "cortex_wakes_total", model="a") == 1
                assert prometheus_value(scraped, "cortex_cold_starts_total") == 2

        pids = [m["engine"]["pid"] for m in n1.models().values()]
        assert len(pids) == 2
        assert n1.stop(timeout=120) == 0
        for pid in pids:
            assert await async_wait_group_gone(pid, 30) is not None, f"engine {pid} lives on"
