"""What cortex counts when it wakes a sleeper: a wake, unless the neuron says the wake failed
and the model was loaded afresh; that is a cold start, in the metrics and the estimates."""

from __future__ import annotations

from cortex_testing import cortex, value
from fake_neuron import FakeNeuron

CHAT = "/v1/chat/completions"
COLD, WAKE = 60.0, 5.0  # the default estimates, until something is measured


async def test_a_woken_sleeper_counts_as_a_wake() -> None:
    neuron = FakeNeuron("n1", models={"m1": "sleeping"}, max_loaded_models=1)
    async with cortex(neuron, catalogue=("m1",)) as c:
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200
        assert neuron.wakes == ["m1"] and neuron.loads == []
        metrics = await c.metrics()
        assert value(metrics, "cortex_wakes_total", model="m1", node="n1") == 1
        assert value(metrics, "cortex_cold_starts_total", model="m1") == 0
        assert value(metrics, "cortex_model_ready_seconds_count", model="m1", kind="wake") == 1
        estimates = c.gateway.loader.estimates
        assert estimates.eta("m1", "n1", "wake") < WAKE  # measured
        assert estimates.eta("m1", "n1", "cold") == COLD


async def test_a_wake_that_failed_and_loaded_afresh_counts_as_a_cold_start() -> None:
    neuron = FakeNeuron("n1", models={"m1": "sleeping"}, max_loaded_models=1, wake_fails=True)
    async with cortex(neuron, catalogue=("m1",)) as c:
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200
        assert neuron.wakes == ["m1"]
        metrics = await c.metrics()
        assert value(metrics, "cortex_wakes_total", model="m1") == 0
        assert value(metrics, "cortex_cold_starts_total", model="m1", node="n1") == 1
        assert value(metrics, "cortex_model_ready_seconds_count", model="m1", kind="cold") == 1
        assert value(metrics, "cortex_model_ready_seconds_count", model="m1", kind="wake") == 0
        estimates = c.gateway.loader.estimates
        assert estimates.eta("m1", "n1", "wake") == WAKE  # nothing learnt about wakes
        assert estimates.eta("m1", "n1", "cold") < COLD
