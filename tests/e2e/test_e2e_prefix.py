"""Prefix-affinity routing, end to end: cortex → two neurons → two real vLLM engines of one model.

A multi-turn conversation goes to one engine turn after turn, and that engine's own prefix
cache counters show the hits (the neuron re-exports the same counters with a ``model``
label). Then that engine is flooded straight through its neuron, behind cortex's back: once
the load shows in the neurons' reports, a new conversation that starts with the same system
prompt (which only the flooded engine holds) goes to the other engine, and cortex counts a
``guard`` decision.

The two neurons are the session's ``shared_neuron`` and ``defaults_neuron`` (each serves
``tiny``): no engine starts here when the tests before this one started them. The test leaves
both engines idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    SharedNeuron,
    cortex_serving,
    engine_metric,
    prometheus_value,
    record,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

SYSTEM = "You answer questions about caches, briefly and precisely. " * 30  # ~1,700 chars
FLOOD = 6
"""Long streams sent straight to the holding engine: well past the guard (margin 2)."""


async def counters(engine: httpx.AsyncClient) -> dict[str, float]:
    text = (await engine.get("/metrics")).text
    out = {}
    for name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
        out[name] = prometheus_value(text, name, model_name="tiny") or 0.0
    out["prompt"] = prometheus_value(text, "vllm:prompt_tokens_total", model_name="tiny") or 0.0
    return out


async def settled(
    engines: dict[str, httpx.AsyncClient], before: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """The engines' counters once a request answered since ``before`` shows in them."""
    deadline = time.monotonic() + 30
    while True:
        after = {n: await counters(e) for n, e in engines.items()}
        if sum(a["prompt"] for a in after.values()) > sum(b["prompt"] for b in before.values()):
            return after
        assert time.monotonic() < deadline, "the engines' counters never showed the request"
        await asyncio.sleep(0.2)


def chat(messages: list[dict[str, str]], max_tokens: int = 12, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


async def test_a_conversation_keeps_its_engine_and_a_flood_moves_new_ones(
    shared_neuron: SharedNeuron, defaults_neuron: SharedNeuron, tmp_path: Path
) -> None:
    began = time.monotonic()
    names = {
        "n1": await asyncio.to_thread(shared_neuron.ready),
        "n2": await asyncio.to_thread(defaults_neuron.ready),
    }
    record("prefix: both neurons ready", time.monotonic() - began)
    urls = {name: n.models()["tiny"]["engine"]["url"] for name, n in names.items()}
    routing = {"policy": "prefix", "guard_margin": 2, "guard_ratio": 0}
    with cortex_serving(
        tmp_path, "cortex", {k: n.url for k, n in names.items()}, routing=routing
    ) as (api, metrics_url):
        async with contextlib.AsyncExitStack() as clients:
            timeout = httpx.Timeout(600, connect=10)
            c = await clients.enter_async_context(httpx.AsyncClient(base_url=api, timeout=timeout))
            engines = {
                name: await clients.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60))
                for name, url in urls.items()
            }

            async def both_routable() -> bool:
                text = (await c.get(metrics_url)).text
                return all(
                    prometheus_value(text, "cortex_model_loaded", model="tiny", node=n) == 1
                    for n in names
                )

            await wait_until(both_routable, 60, "cortex to see tiny ready on both neurons")

            # --- one conversation, four turns: one engine, hits growing there -----------
            messages = [{"role": "system", "content": SYSTEM}]
            holder: str | None = None
            hits_per_turn = []
            for turn in range(4):
                messages.append({"role": "user", "content": f"Question {turn}: why cache?"})
                before = {n: await counters(e) for n, e in engines.items()}
                response = await c.post("/v1/chat/completions", json=chat(messages))
                assert response.status_code == 200, response.text
                after = await settled(engines, before)
                served = [n for n in names if after[n]["prompt"] > before[n]["prompt"]]
                assert len(served) == 1, (turn, before, after)
                holder = holder or served[0]
                assert served == [holder], f"turn {turn} went to {served}, not {holder}"
                hits_per_turn.append(
                    after[holder]["vllm:prefix_cache_hits_total"]
                    - before[holder]["vllm:prefix_cache_hits_total"]
                )
                answer = response.json()["choices"][0]["message"]["content"]
                messages.append({"role": "assistant", "content": answer})
            assert holder is not None
            # Every later turn finds at least the system prompt's blocks in the cache.
            assert all(hits > 0 for hits in hits_per_turn[1:]), hits_per_turn
            other = next(n for n in names if n != holder)

            # The neuron re-exports the engine's counters with the model label.
            holder_engine = await counters(engines[holder])
            neuron_text = (await c.get(f"{names[holder].url}/metrics")).text
            for name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
                assert prometheus_value(neuron_text, name, model="tiny") == holder_engine[name]

            # --- flood the holder behind cortex's back; a new conversation goes away ----
            async def long_stream() -> None:
                body = chat([{"role": "user", "content": "flood"}], 3000, stream=True)
                async with httpx.AsyncClient(base_url=names[holder].url, timeout=600) as n:
                    async with n.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass

            flood = [asyncio.create_task(long_stream()) for _ in range(FLOOD)]
            try:

                async def flooded() -> bool:
                    listed = (await c.get(f"{names[holder].url}/models")).json()
                    info = next(m for m in listed if m["id"] == "tiny")
                    return (info.get("running") or 0) + (info.get("waiting") or 0) >= FLOOD

                await wait_until(flooded, 120, "the holder's neuron to report the flood")
                await asyncio.sleep(1.5)  # three cortex polls
                before = {n: await counters(e) for n, e in engines.items()}
                fresh = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "A new conversation."},
                ]
                response = await c.post("/v1/chat/completions", json=chat(fresh))
                assert response.status_code == 200, response.text
                after = await settled(engines, before)
                assert after[other]["prompt"] > before[other]["prompt"], (before, after)
            finally:
                for task in flood:
                    task.cancel()
                await asyncio.gather(*flood, return_exceptions=True)
            text = (await c.get(metrics_url)).text
            decided = {
                reason: prometheus_value(
                    text, "cortex_routing_decisions_total", model="tiny", reason=reason
                )
                or 0
                for reason in ("prefix", "load", "guard")
            }
            assert decided == {"prefix": 3, "load": 1, "guard": 1}, decided

            # The flood's streams were cancelled: both engines idle again for the tests
            # after this one (the SIGTERM test starts on an idle neuron).
            async def idle() -> bool:
                for name, neuron in names.items():
                    health = (await c.get(f"{neuron.url}/health")).json()
                    running = await engine_metric(
                        engines[name], "vllm:num_requests_running", "tiny"
                    )
                    if health["in_flight"] or running:
                        return False
                return True

            await wait_until(idle, 60, "both engines to be idle after the flood")
