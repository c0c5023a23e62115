"""Models on demand and the residency ladder end to end: real cortex processes, real
neurons, real vLLM engines (CPU: sleep frees nothing there, but every call of the control
path is real).

Two neurons that hold one awake model each (``max_loaded_models = 1``): n1 stop-only (the
ladder off), n2 with the ladder on (its default). Three catalogued copies of the tiny model,
``a``, ``b`` and ``c``. Four cortex configurations run in turn against the same neurons, four
engine starts in all (each model's first start on each neuron; no model starts twice):

1. ``a`` on n1: five concurrent first requests for ``a`` (one of them streaming, which
   receives keep-alives, then tokens) cause one load.
2. ``b`` pinned on n1: cortex loads it at start, evicting ``a`` (its engine process is gone);
   ``a`` then answers 503 + Retry-After and ``b`` stays.
3. n1 and n2: ``a`` loads on n2, the one with room; ``c`` then puts ``a`` to sleep (a request
   waiting through an eviction and a load), ``a`` again wakes with its first token within 3 s
   (a cold start is about 30 s), and ten concurrent requests for the sleeping ``c`` cause one
   wake: only two engines started there.
4. n1 alone, ``b`` unpinned with an idle TTL: unloaded once idle for it.

Then, cortex gone: ``c`` is unloaded straight from n2 (its engine goes, ``c`` is unknown), and
SIGTERM stops n2 with ``a`` asleep, leaving no engine.

An eviction that a request waits for, with the evicted engine's process gone (stop-only), is
the pin's here and the ladder's sleep in 3; cortex's tests cover a request's own LRU eviction
(``cortex/tests/test_cold_loads.py``). Starting ``b`` on n1 for a request and then ``a`` again
for the pin would prove no more and cost one more engine start.
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

LOAD_WAIT = ENGINE_START_TIMEOUT + 60
FIRST_TOKEN_WITHIN = 3.0
"""A sleeper's first token after its wake (a cold start here is about 30 s)."""


def entry(model_dir: Path, model_id: str, **extra: Any) -> dict[str, Any]:
    """A catalogue entry serving the tiny model as ``model_id``."""
    spec = tiny_spec(model_dir, model_id)
    return {"id": spec.pop("model_id"), **spec, **extra}


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


async def neurons_up(c: httpx.AsyncClient, count: int) -> None:
    async def up() -> bool:
        fleet = (await c.get("/fleet")).json()
        return sum(1 for n in fleet["neurons"] if n["up"]) == count

    await wait_until(up, 30, f"cortex to see {count} neuron(s) up")


async def test_models_load_on_demand_evict_pin_sleep_wake_and_go_idle(
    tiny_model: Path, tmp_path: Path
) -> None:
    # n1 is stop-only (the residency ladder off): an evicted model's engine is gone.
    off = {"enabled": False}
    n1_config = write_config(tmp_path / "n1.toml", port=free_port(), max_loaded_models=1, sleep=off)
    # The residency ladder on (its default): an evicted model sleeps.
    n2_config = write_config(tmp_path / "n2.toml", port=free_port(), max_loaded_models=1)
    a, b, third = entry(tiny_model, "a"), entry(tiny_model, "b"), entry(tiny_model, "c")
    with (
        neuron_running(n1_config, tmp_path / "n1.log") as n1,
        neuron_running(n2_config, tmp_path / "n2.log") as n2,
    ):
        # 1. Cold load, single-flight, keep-alives.
        loading = {"keepalive_interval": 1.0, "cold_start_timeout": LOAD_WAIT}
        with cortex_serving(tmp_path, "c1", {"n1": n1.url}, [a], loading) as (api, metrics):
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

        # 2. A pin is loaded at start, evicting a (its engine goes: n1 is stop-only), and is
        # then never evicted.
        pinned = {**b, "pinned_on": ["n1"]}
        loading = {"check_interval": 0.5}
        with cortex_serving(tmp_path, "c2", {"n1": n1.url}, [pinned, a], loading) as (api, metrics):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:
                began = time.monotonic()

                async def pin_loaded() -> bool:
                    models = n1.models()
                    return set(models) == {"b"} and models["b"]["status"] == "ready"

                await wait_until(pin_loaded, LOAD_WAIT, "cortex to load the pinned b on n1")
                record("on demand: pin b loaded at start, evicting a", time.monotonic() - began)
                assert await async_wait_group_gone(engine_a, 30) is not None, "a's engine lives on"
                await wait_until(lambda: _ready_in_cortex(c, "b"), 10, "cortex to see b ready")
                scraped = (await c.get(metrics)).text
                assert (
                    prometheus_value(
                        scraped, "cortex_evictions_total", model="a", node="n1", reason="lru"
                    )
                    == 1
                )
                load_sum = prometheus_value(scraped, "cortex_model_load_seconds_sum", model="b")
                assert load_sum is not None and load_sum > 1
                refused = await c.post("/v1/chat/completions", json=chat_body("a"))
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "5"
                assert refused.json()["error"]["code"] == "no_capacity"
                assert set(n1.models()) == {"b"}

        # 3. Two neurons: a goes to n2, the one with room. n2 runs the residency ladder
        # (its default): c then puts a to sleep, a wakes within FIRST_TOKEN_WITHIN, and
        # ten concurrent requests for the sleeping c cause one wake. Only a and c start.
        neurons = {"n1": n1.url, "n2": n2.url}
        loading = {**loading, "keepalive_interval": 1.0, "cold_start_timeout": LOAD_WAIT}
        with cortex_serving(tmp_path, "c3", neurons, [pinned, a, third], loading) as (api, metrics):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:
                await neurons_up(c, 2)
                record("ladder: cold start of a on n2", await first_token(c, "a"))
                assert set(n2.models()) == {"a"}
                assert set(n1.models()) == {"b"}
                record("ladder: cold start of c (a sleeps)", await first_token(c, "c"))
                models = n2.models()
                assert models["a"]["status"] == "sleeping", models
                assert models["a"]["sleep_level"] == 1
                assert models["c"]["status"] == "ready"

                took = await first_token(c, "a")
                record("ladder: a again (a wakes, c sleeps): first token", took)
                assert took < FIRST_TOKEN_WITHIN, f"first token after {took:.1f}s"
                models = n2.models()
                assert models["a"]["status"] == "ready" and models["c"]["status"] == "sleeping"

                woken = await asyncio.gather(
                    *(c.post("/v1/chat/completions", json=chat_body("c")) for _ in range(10))
                )
                assert [r.status_code for r in woken] == [200] * 10, [r.text for r in woken]

                async with httpx.AsyncClient(timeout=30) as direct:
                    own = (await direct.get(f"{n2.url}/metrics")).text
                assert prometheus_value(own, "neuron_model_wakes_total", model="c") == 1
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
                cold = [
                    prometheus_value(scraped, "cortex_cold_starts_total", model=m)
                    for m in ("a", "c")
                ]
                assert cold == [1, 1], cold
                assert set(n1.models()) == {"b"}, "the pinned b was never evicted"

        # 4. n1 alone, b no longer pinned: it leaves once idle (stop-only: unloaded).
        idle = {**b, "idle_ttl": 3.0}
        with cortex_serving(tmp_path, "c4", {"n1": n1.url}, [idle], loading) as (api, metrics):
            async with httpx.AsyncClient(base_url=api, timeout=LOAD_WAIT) as c:
                await neurons_up(c, 1)

                async def b_gone() -> bool:
                    return "b" not in n1.models()

                began = time.monotonic()
                await wait_until(b_gone, 60, "the idle b to be unloaded from n1")
                record("on demand: idle b unloaded (idle_ttl 3 s)", time.monotonic() - began)
                scraped = (await c.get(metrics)).text
                assert (
                    prometheus_value(
                        scraped, "cortex_evictions_total", model="b", node="n1", reason="idle"
                    )
                    == 1
                )
        assert n1.models() == {}

        # 5. With cortex gone, an unload straight to n2: c's engine goes, and so does c.
        async with client(n2) as direct:
            engine_c = (await list_models(direct, n2))["c"]["engine"]["pid"]
            began = time.monotonic()
            unloaded = await direct.post("/models/unload", json={"model_id": "c"})
            assert unloaded.status_code == 200, unloaded.text
            assert unloaded.json()["status"] == "unloaded"
            record("unload c (request → 200)", time.monotonic() - began)
            gone = await async_wait_group_gone(engine_c, timeout=10)
            assert gone is not None, (
                f"engine process group {engine_c} still there 10 s after unload"
            )
            assert set(await list_models(direct, n2)) == {"a"}
            gone_request = await direct.post("/v1/chat/completions", json=chat_body("c"))
            assert gone_request.status_code == 404
            assert gone_request.json()["error"]["code"] == "model_not_found"

        # 6. SIGTERM to n2 with a asleep: it exits 0 and leaves no engine.
        pids = [m["engine"]["pid"] for m in n2.models().values()]
        assert len(pids) == 1
        assert n2.stop(timeout=120) == 0
        for pid in pids:
            assert await async_wait_group_gone(pid, 30) is not None, f"engine {pid} lives on"


async def _ready_in_cortex(c: httpx.AsyncClient, model: str) -> bool:
    data = (await c.get("/v1/models")).json()["data"]
    return any(
        m["id"] == model and {"node": "n1", "status": "ready"} in m["locations"] for m in data
    )
