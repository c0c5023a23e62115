"""The engines' own numbers, through the neuron: ``vllm:`` metrics with a ``model`` label on
``/metrics``, and each model's ``running``/``waiting``/``kv_cache_usage`` in ``/models``; an
engine that does not answer gives nothing and never holds the neuron's answers up."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from neuron_testing import Running, fake_harness, running, settings_for
from prometheus_client.parser import text_string_to_metric_families

from neuron.settings import Harnesses


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def engine(model: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"engine": "0", "model_name": model, "model": model, **more}.items()))


async def wait_for(neuron: Running, model: str, **want: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for _ in range(100):
        info = (await neuron.models())[model]
        if all(info.get(k) == v for k, v in want.items()):
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} never showed {want}: {info}")


async def test_vllm_metrics_are_re_exported_with_a_model_label(neuron: Running) -> None:
    await neuron.load("m1")
    await neuron.load("m2")
    text = (await neuron.client.get("/metrics")).text
    s = samples(text)
    for model in ("m1", "m2"):
        assert s["vllm:num_requests_running", engine(model)] == 0
        assert s["vllm:num_requests_waiting", engine(model)] == 0
        assert s["vllm:kv_cache_usage_perc", engine(model)] == 0
        assert s["vllm:prefix_cache_hits_total", engine(model)] == 30
        assert s["vllm:prefix_cache_queries_total", engine(model)] == 120  # the hit-rate panel
        assert s["vllm:time_to_first_token_seconds_bucket", engine(model, le="+Inf")] == 4
    assert s["neuron_models", (("state", "ready"),)] == 2  # the neuron's own, as before
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1  # one family, two engines
    assert "python_gc_objects_collected_total" not in text  # only vLLM's own families


async def test_models_report_the_engines_load() -> None:
    harness = fake_harness(FAKE_ENGINE_MAX_RUNNING="1")
    async with running(settings_for(harness=Harnesses(vllm=harness), health_interval=0.1)) as n:
        await n.load("m1")
        idle = await wait_for(n, "m1", running=0)
        assert (idle["waiting"], idle["kv_cache_usage"]) == (0, 0.0)
        body = {"model": "m1", "fake_sleep": 3}
        calls = [asyncio.create_task(n.client.post("/v1/completions", json=body)) for _ in range(3)]
        busy = await wait_for(n, "m1", running=1, waiting=2)
        assert busy["kv_cache_usage"] == 0.125
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await wait_for(n, "m1", running=0, waiting=0)


async def test_the_older_kv_cache_gauge_is_read_too() -> None:
    harness = fake_harness(FAKE_ENGINE_KV_GAUGE="vllm:gpu_cache_usage_perc")
    async with running(settings_for(harness=Harnesses(vllm=harness), health_interval=0.1)) as n:
        await n.load("m1")
        body = {"model": "m1", "fake_sleep": 3}
        call = asyncio.create_task(n.client.post("/v1/completions", json=body))
        await wait_for(n, "m1", running=1, kv_cache_usage=0.125)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


async def test_a_stuck_engine_gives_nothing_and_holds_nothing_up() -> None:
    async with running(settings_for(engine_metrics_timeout=0.5, health_interval=0.1)) as n:
        await n.load("m1")
        stuck = (await n.load("m2")).json()["model"]["engine"]["pid"]
        await wait_for(n, "m2", running=0)
        os.killpg(stuck, signal.SIGSTOP)  # still accepts connections, never answers
        try:
            began = time.monotonic()
            response = await n.client.get("/metrics")
            took = time.monotonic() - began
            assert response.status_code == 200
            assert took < 2.0
            s = samples(response.text)
            assert ("vllm:num_requests_running", engine("m1")) in s
            assert ("vllm:num_requests_running", engine("m2")) not in s
            assert s["neuron_models", (("state", "ready"),)] == 2
            gone = await wait_for(n, "m2", running=None)
            assert (gone["waiting"], gone["kv_cache_usage"]) == (None, None)
            assert (await n.models())["m1"]["running"] == 0
        finally:
            os.killpg(stuck, signal.SIGCONT)


async def test_a_model_not_ready_reports_no_load(neuron: Running) -> None:
    await neuron.load("broken", source="/nonexistent/x")
    info = (await neuron.models())["broken"]
    assert (info["running"], info["waiting"], info["kv_cache_usage"]) == (None, None, None)
    assert "vllm:" not in (await neuron.client.get("/metrics")).text


async def test_metrics_that_are_not_prometheus_text_give_nothing() -> None:
    harness = fake_harness(FAKE_ENGINE_METRICS_BROKEN="1")
    async with running(settings_for(harness=Harnesses(vllm=harness), health_interval=0.1)) as n:
        await n.load("m1")
        response = await n.client.get("/metrics")
        assert response.status_code == 200
        assert "vllm:" not in response.text
        assert samples(response.text)["neuron_models", (("state", "ready"),)] == 1
        await asyncio.sleep(0.3)  # a few rounds of the /models refresh
        info = (await n.models())["m1"]
        assert (info["status"], info["running"], info["kv_cache_usage"]) == ("ready", None, None)
