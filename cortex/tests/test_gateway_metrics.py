"""Prometheus on the metrics listener: requests, errors, latency, tokens, fleet, GPUs."""

from __future__ import annotations

from cortex_testing import cortex
from fake_neuron import FakeNeuron
from prometheus_client.parser import text_string_to_metric_families


def values(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_metrics_describe_the_traffic_and_the_fleet() -> None:
    gpus = [
        {
            "index": 0,
            "total": 24000,
            "vram_used_mb": 4000,
            "vram_free_mb": 20000,
            "utilization_pct": 50,
        }
    ]
    # chunk_delay: chunks written back to back can arrive in one read, leaving no gap to observe
    async with cortex(FakeNeuron("n1", chunks=3, chunk_delay=0.01, devices=gpus)) as c:
        await c.client.post("/v1/chat/completions", json={"model": "m1"})
        await c.client.post("/v1/chat/completions", json={"model": "m1", "stream": True})
        await c.client.post("/v1/chat/completions", json={"model": "secret-prompt-model"})
        v = values(await c.metrics())
    chat = "/v1/chat/completions"
    assert (
        v["cortex_requests_total"][
            (
                ("endpoint", chat),
                ("key", "_anonymous"),
                ("model", "m1"),
                ("node", "n1"),
                ("status", "200"),
            )
        ]
        == 2
    )
    # A model nobody knows is counted, but its name does not become a label value.
    assert (
        v["cortex_requests_total"][
            (
                ("endpoint", chat),
                ("key", "_anonymous"),
                ("model", "_unknown"),
                ("node", "none"),
                ("status", "404"),
            )
        ]
        == 1
    )
    assert all("secret" not in str(k) for series in v.values() for k in series)
    assert v["cortex_request_duration_seconds_count"][(("endpoint", chat), ("model", "m1"))] == 2
    assert v["cortex_time_to_first_token_seconds_count"][(("model", "m1"),)] == 1
    assert v["cortex_inter_token_latency_seconds_count"][(("model", "m1"),)] >= 1
    assert v["cortex_prompt_tokens_total"][(("key", "_anonymous"), ("model", "m1"))] == 6
    assert v["cortex_completion_tokens_total"][(("key", "_anonymous"), ("model", "m1"))] == 6
    assert v["cortex_inflight_requests"][(("model", "m1"), ("node", "n1"))] == 0
    assert v["cortex_neuron_up"][(("node", "n1"),)] == 1
    assert v["cortex_model_loaded"][(("model", "m1"), ("node", "n1"))] == 1
    assert v["cortex_gpu_memory_used_bytes"][(("gpu", "0"), ("node", "n1"))] == 4000 * 2**20
    assert v["cortex_gpu_utilization_ratio"][(("gpu", "0"), ("node", "n1"))] == 0.5
