"""Models on demand end to end: real cortex processes, real neurons, real vLLM engines.

Two neurons that hold one model each (``max_loaded_models = 1``) and two catalogued copies
of the tiny model, ``a`` and ``b``. Three cortex configurations run in turn against the
same neurons, four engine starts in all:

1. ``a`` and ``b`` on n1: five concurrent first requests for ``a`` (one of them streaming,
   which receives keep-alives, then tokens) cause one load; a request for ``b`` evicts ``a``
   (its engine process is gone) and loads ``b``.
2. ``a`` pinned on n1: cortex loads it at start; ``b`` then answers 503 + Retry-After and
   ``a`` stays.
3. n1 and n2: ``b`` loads on n2, the one with room, and is unloaded once idle for its TTL.

Then, cortex gone, ``a`` is unloaded straight from n1: its engine goes and ``a`` is unknown.
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
    client,
    cortex_serving,
    free_port,
    list_models,
    neuron_running,
    prometheus_value,
    record,
    tiny_spec,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

LOAD_WAIT = ENGINE_START_TIMEOUT + 60


def entry(model_dir: Path, model_id: str, **extra: Any) -> dict[str, Any]:
    """A catalogue entry serving the tiny model as ``model_id``."""
    spec = tiny_spec(model_dir, model_id)
    return {"id": spec.pop("model_id"), **spec, **extra}


async def neurons_up(c: httpx.AsyncClient, count: int) -> None:
    async def up() -> bool:
        fleet = (await c.get("/fleet")).json()
        return sum(1 for n in fleet["neurons"] if n["up"]) == count

    await wait_until(up, 30, f"cortex to see {count} neuron(s) up")


async def test_models_load_on_demand_evict_pin_and_go_idle(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Stop-only (the residency ladder off): an evicted model's engine is gone.
    off = {"enabled": False}
    n1_config = write_config(tmp_path / "n1.toml", port=free_port(), max_loaded_models=1, sleep=off)
    n2_config = write_config(tmp_path / "n2.toml", port=free_port(), max_loaded_models=1, sleep=off)
    a, b = entry(tiny_model, "a"), entry(tiny_model, "b")
    with (
        neuron_running(n1_config, tmp_path / "n1.log") as n1,
        neuron_running(n2_config, tmp_path / "n2.log") as n2,
    ):
        # 1. Cold load, single-flight, keep-alives, LRU eviction.
        loading = {"keepalive_interval": 1.0, "cold_start_timeout": LOAD_WAIT}
        with cortex_serving(tmp_path, "c1", {"n1": n1.url}, [a, b], loading) as (api, metrics):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:
                await neurons_up(c, 1)

                async def streamed() -> list[str]:
                    body = chat_body("a", stream=True)
                    async with c.stream("POST", "/v1/chat/completions", json=body) as response:
                        assert response.status_code == 200
                        return [line async for line in response.aiter_lines() if line]

                began = time.monotonic()
                lines, *answers = await asyncio.gather(
                    streamed(),
                    *(c.post("/v1/chat/completions", json=chat_body("a")) for _ in range(4)),
                )
                record(
                    "on demand: cold start of a, 5 concurrent first requests",
                    time.monotonic() - began,
                )
                assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
                assert all(r.json()["choices"][0]["message"]["content"] for r in answers)
                first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
                assert first_data >= 1 and all(
                    line == ": loading a" for line in lines[:first_data]
                ), lines[: first_data + 1]
                assert lines[-1] == "data: [DONE]"
                on_n1 = n1.models()
                assert set(on_n1) == {"a"} and on_n1["a"]["status"] == "ready"
                engine_a = on_n1["a"]["engine"]["pid"]

                scraped = (await c.get(metrics)).text
                assert (
                    prometheus_value(scraped, "cortex_cold_starts_total", model="a", node="n1") == 1
                )
                assert (
                    prometheus_value(
                        scraped, "cortex_model_load_seconds_count", model="a", node="n1"
                    )
                    == 1
                )
                assert prometheus_value(scraped, "cortex_requests_waiting_for_load", model="a") == 0

                began = time.monotonic()
                evicting = await c.post("/v1/chat/completions", json=chat_body("b"))
                record("on demand: evict a, cold start of b", time.monotonic() - began)
                assert evicting.status_code == 200, evicting.text
                assert await async_wait_group_gone(engine_a, 30) is not None, "a's engine lives on"
                assert set(n1.models()) == {"b"}
                scraped = (await c.get(metrics)).text
                assert (
                    prometheus_value(
                        scraped, "cortex_evictions_total", model="a", node="n1", reason="lru"
                    )
                    == 1
                )
                load_sum = prometheus_value(scraped, "cortex_model_load_seconds_sum", model="b")
                assert load_sum is not None and load_sum > 1

        # 2. A pin is loaded at start (evicting b), and is then never evicted.
        pinned = {**a, "pinned_on": ["n1"]}
        loading = {"check_interval": 0.5}
        with cortex_serving(tmp_path, "c2", {"n1": n1.url}, [pinned, b], loading) as (api, _):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:

                async def pin_loaded() -> bool:
                    models = n1.models()
                    return set(models) == {"a"} and models["a"]["status"] == "ready"

                await wait_until(pin_loaded, LOAD_WAIT, "cortex to load the pinned a on n1")
                await wait_until(lambda: _ready_in_cortex(c, "a"), 10, "cortex to see a ready")
                refused = await c.post("/v1/chat/completions", json=chat_body("b"))
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "5"
                assert refused.json()["error"]["code"] == "no_capacity"
                assert set(n1.models()) == {"a"}

        # 3. Two neurons: b goes where there is room, and leaves once idle.
        idle = {**b, "idle_ttl": 3.0}
        neurons = {"n1": n1.url, "n2": n2.url}
        with cortex_serving(tmp_path, "c3", neurons, [pinned, idle], loading) as (api, metrics):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:
                await neurons_up(c, 2)
                answer = await c.post("/v1/chat/completions", json=chat_body("b"))
                assert answer.status_code == 200, answer.text
                assert set(n2.models()) == {"b"}
                assert set(n1.models()) == {"a"}

                async def b_gone() -> bool:
                    return "b" not in n2.models()

                began = time.monotonic()
                await wait_until(b_gone, 60, "the idle b to be unloaded from n2")
                record("on demand: idle b unloaded (idle_ttl 3 s)", time.monotonic() - began)
                scraped = (await c.get(metrics)).text
                assert (
                    prometheus_value(
                        scraped, "cortex_evictions_total", model="b", node="n2", reason="idle"
                    )
                    == 1
                )
                assert set(n1.models()) == {"a"}, "a pinned model is never idle-unloaded"

        # 4. With cortex gone, an unload straight to n1: its engine goes, and so does a.
        async with client(n1) as direct:
            engine_a = (await list_models(direct, n1))["a"]["engine"]["pid"]
            began = time.monotonic()
            unloaded = await direct.post("/models/unload", json={"model_id": "a"})
            assert unloaded.status_code == 200, unloaded.text
            assert unloaded.json()["status"] == "unloaded"
            record("unload a (request → 200)", time.monotonic() - began)
            gone = await async_wait_group_gone(engine_a, timeout=10)
            assert gone is not None, (
                f"engine process group {engine_a} still there 10 s after unload"
            )
            assert await list_models(direct, n1) == {}
            gone_request = await direct.post("/v1/chat/completions", json=chat_body("a"))
            assert gone_request.status_code == 404
            assert gone_request.json()["error"]["code"] == "model_not_found"


async def _ready_in_cortex(c: httpx.AsyncClient, model: str) -> bool:
    data = (await c.get("/v1/models")).json()["data"]
    return any(
        m["id"] == model and {"node": "n1", "status": "ready"} in m["locations"] for m in data
    )
