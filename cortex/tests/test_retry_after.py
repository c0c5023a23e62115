"""``Retry-After`` on a 503 for a model that is not ready: the time its load or wake is
expected to take still, while it is on schedule; once it has overrun its estimate, a quarter
of that estimate, at most 60 s (a late load is not asked about every second); and
``gateway.retry_after`` when nothing is coming. The estimate is this cortex's own timing, else
the neurons' figures (another replica did the load), else the configured default."""

from __future__ import annotations

import time

import httpx
import pytest
from cortex_testing import Running, cortex
from fake_neuron import FakeNeuron

from cortex.app import build
from cortex.fleet.eta import Estimates, retry_after
from cortex.settings import Catalogue, CortexSettings

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("left", "estimate", "expected"),
    [
        (30.0, 60.0, 30),  # on schedule: the time left
        (10.0, 600.0, 10),  # ten seconds before a 10-minute load is due: 10, not 150
        (14.2, 60.0, 15),  # rounded up
        (0.3, 60.0, 1),  # due in under a second
        (0.0, 60.0, 15),  # due now: a quarter of the estimate
        (-300.0, 60.0, 15),  # overran by five minutes: still a quarter, not 1 s
        (-5.0, 600.0, 60),  # overran a 10-minute estimate: a quarter, capped at 60 s
        (0.3, 0.5, 1),  # never under a second
        (-2.0, 0.5, 1),
    ],
)
def test_retry_after_is_the_time_left_then_a_quarter_of_the_estimate(
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
    now[0] += 15  # the last quarter: the time left, not a quarter of the estimate
    assert estimates.retry_after("m") == 5
    now[0] += 15  # ten seconds past the estimate
    assert estimates.retry_after("m") == 15
    now[0] += 600
    assert estimates.retry_after("m") == 15
    estimates.ended("m")
    assert estimates.retry_after("m") is None


def test_a_load_this_cortex_never_timed_is_estimated_from_the_neurons_figures() -> None:
    now = [100.0]
    estimates = Estimates(cold_s=600.0, wake_s=30.0, clock=lambda: now[0])
    reported = {("n1", "cold"): 20.0, ("n1", "wake"): 2.0}
    estimates.started("m", "n1", "cold", lambda node, kind: reported[(node, kind)])
    assert estimates.retry_after("m") == 20  # not the 600 s default
    estimates.ended("m")
    estimates.observe("m", "n1", "cold", 40.0)  # its own timing, once it has one, comes first
    estimates.started("m", "n1", "cold", lambda node, kind: reported[(node, kind)])
    assert estimates.retry_after("m") == 40


@pytest.mark.parametrize(
    ("info", "own", "expected"),
    [
        # 20 s into a load by the neuron's count, read 30 s ago: 50 s in, 10 s left of 60.
        ({"status": "loading", "state_s": 20.0}, None, 10),
        # A wake the neuron last did in 4 s, 1 s in: 3 s left (not the 30 s default).
        ({"status": "waking", "state_s": 1.0, "last_wake_s": 4.0}, None, 3),
        # This cortex's own timing of the wake comes before the neuron's.
        ({"status": "waking", "state_s": 1.0, "last_wake_s": 4.0}, 9.0, 8),
        # A load the neuron last did in 200 s, 250 s in: overran, a quarter of it.
        ({"status": "loading", "state_s": 220.0, "last_load_s": 200.0}, None, 50),
    ],
)
async def test_a_load_another_replica_started_is_estimated_from_the_neurons_word(
    info: dict[str, object], own: float | None, expected: int
) -> None:
    settings = CortexSettings(
        neurons=[{"name": "n1", "endpoint": "http://127.0.0.1:9"}],
        loading={"cold_estimate": 60, "wake_estimate": 30},
    )
    gateway = build(settings, Catalogue(models=[]))
    try:
        node = gateway.fleet.node("n1")
        node.up, node.models = True, {"m1": {"id": "m1", **info}}
        node.seen = time.monotonic() - (30.0 if info["status"] == "loading" else 0.0)
        gateway.fleet.changed()
        if own is not None:
            gateway.loader.estimates.observe("m1", "n1", "wake", own)
        assert gateway.loader.retry_after("m1") == expected
    finally:
        await gateway.session.close()


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
