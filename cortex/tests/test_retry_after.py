"""``Retry-After`` on a 503 for a model that is not ready: the time its load or wake is
expected to take still, never under a quarter of that estimate (a load that overruns its
estimate is not asked about every second), and ``gateway.retry_after`` when nothing is coming."""

from __future__ import annotations

import httpx
import pytest
from cortex_testing import Running, cortex
from fake_neuron import FakeNeuron

from cortex.fleet.eta import Estimates, retry_after

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("left", "estimate", "expected"),
    [
        (30.0, 60.0, 30),  # on schedule: the time left
        (14.2, 60.0, 15),  # the last quarter: a quarter of the estimate
        (0.0, 60.0, 15),  # due now
        (-300.0, 60.0, 15),  # overran by five minutes: still a quarter, not 1 s
        (0.3, 0.5, 1),  # never under a second
        (-2.0, 0.5, 1),
    ],
)
def test_retry_after_is_the_time_left_but_at_least_a_quarter_of_the_estimate(
    left: float, estimate: float, expected: int
) -> None:
    assert retry_after(left, estimate) == expected


def test_a_load_that_overruns_its_estimate_keeps_a_floor() -> None:
    now = [100.0]
    estimates = Estimates(cold_s=60.0, wake_s=5.0, clock=lambda: now[0])
    assert estimates.retry_after("m") is None  # nothing coming
    estimates.started("m", "n1", "cold")
    assert estimates.retry_after("m") == 60
    now[0] += 40
    assert estimates.retry_after("m") == 20
    now[0] += 30  # ten seconds past the estimate
    assert estimates.retry_after("m") == 15
    now[0] += 600
    assert estimates.retry_after("m") == 15
    estimates.ended("m")
    assert estimates.retry_after("m") is None


async def not_ready(c: Running) -> httpx.Response:
    await c.poll()
    answer = await c.client.post(CHAT, json={"model": "m1"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "model_not_ready"
    return answer


async def test_model_not_ready_carries_the_estimate_of_what_a_neuron_reports_coming() -> None:
    # on_demand off: this cortex loads nothing, but a neuron is loading or waking the model.
    neuron = FakeNeuron("n1", models={"m1": "loading"}, state_s={"m1": 20.0})
    loading = {"on_demand": False, "cold_estimate": 60, "wake_estimate": 8}
    async with cortex(neuron, catalogue=("m1",), loading=loading) as c:
        assert (await not_ready(c)).headers["retry-after"] == "40"
        neuron.state_s["m1"] = 100.0  # overran its estimate by 40 s
        assert (await not_ready(c)).headers["retry-after"] == "15"
        neuron.models["m1"], neuron.state_s["m1"] = "waking", 1.0
        assert (await not_ready(c)).headers["retry-after"] == "7"
        neuron.models["m1"] = "sleeping"  # nothing coming: the configured default
        assert (await not_ready(c)).headers["retry-after"] == "5"


async def test_a_cold_start_that_outlasts_the_wait_answers_the_time_left() -> None:
    neuron = FakeNeuron("n1", models={}, load_delay=1.5)
    loading = {"cold_start_timeout": 0.5, "cold_estimate": 12}
    async with cortex(neuron, catalogue=("m1",), loading=loading) as c:
        answer = await c.client.post(CHAT, json={"model": "m1"})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "model_loading"
        assert answer.headers["retry-after"] == "12"  # 11.5 s left, rounded up
