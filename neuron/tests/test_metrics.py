"""GET /metrics: models by state, load times and failures, requests, engine exits."""

from __future__ import annotations

from neuron_testing import Running
from prometheus_client.parser import text_string_to_metric_families


async def samples(neuron: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await neuron.client.get("/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_follow_the_models(neuron: Running) -> None:
    await neuron.load("m1")
    await neuron.load("broken", source="/nonexistent/x")
    await neuron.client.post("/v1/chat/completions", json={"model": "m1"})
    await neuron.client.post("/v1/chat/completions", json={"model": "m1", "fake_status": 400})
    s = await samples(neuron)
    assert s["neuron_models", (("state", "ready"),)] == 1
    assert s["neuron_models", (("state", "failed"),)] == 1
    assert s["neuron_models", (("state", "loading"),)] == 0
    assert s["neuron_model_load_seconds_count", (("model", "m1"),)] == 1
    assert 0 < s["neuron_model_load_seconds_sum", (("model", "m1"),)] < 15
    assert s["neuron_model_load_failures_total", (("model", "broken"),)] == 1
    assert s["neuron_requests_total", (("model", "m1"), ("status", "200"))] == 1
    assert s["neuron_requests_total", (("model", "m1"), ("status", "400"))] == 1
    assert s["neuron_requests_in_flight", (("model", "m1"),)] == 0

    await neuron.client.post("/models/unload", json={"model_id": "m1"})
    s = await samples(neuron)
    assert s["neuron_models", (("state", "ready"),)] == 0
    assert s["neuron_engine_exits_total", (("model", "m1"), ("reason", "stopped"))] == 1
