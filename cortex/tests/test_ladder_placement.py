"""The residency ladder in placement: wake a sleeper, or cold-load elsewhere, by expected
time; and the estimates that decide it."""

from __future__ import annotations

import pytest

from cortex.fleet.eta import Estimates
from cortex.fleet.placement import Candidate, NoRoom, Plan, Resident, Want, plan


def cpu(name: str, *residents: Resident, limit: int | None = 1) -> Candidate:
    return Candidate(name, max_models=limit, residents=residents)


def res(model: str, status: str, used: float = 0.0, **kw: bool) -> Resident:
    return Resident(model, status, last_used=used, **kw)


WANT = Want("m")


def test_a_sleeper_with_room_is_woken_where_it_sleeps() -> None:
    fleet = [cpu("a"), cpu("b", res("m", "sleeping"))]
    assert plan(WANT, fleet) == Plan("b", wakes=True)


def test_waking_a_sleeper_evicts_the_least_recently_used_idle_model() -> None:
    fleet = [
        cpu("a", res("m", "sleeping"), res("x", "ready", 5.0), limit=1),
        cpu("b", res("y", "ready")),
    ]
    assert plan(WANT, fleet) == Plan("a", ("x",), wakes=True)


def test_a_waking_model_is_joined() -> None:
    fleet = [cpu("a"), cpu("b", res("m", "waking"))]
    assert plan(WANT, fleet) == Plan("b", joins=True, wakes=True)


def test_sleepers_hold_no_slot() -> None:
    fleet = [cpu("a", res("x", "sleeping"), res("y", "sleeping"))]
    assert plan(WANT, fleet) == Plan("a")


def test_a_cold_load_expected_sooner_beats_a_wake() -> None:
    fleet = [cpu("a", res("m", "sleeping")), cpu("b")]
    slow_wake = {("a", "wake"): 90.0, ("b", "cold"): 20.0}
    assert plan(WANT, fleet, lambda node, kind: slow_wake.get((node, kind), 60.0)) == Plan("b")
    assert plan(WANT, fleet) == Plan("a", wakes=True)  # defaults: a wake is cheaper


def test_a_model_woken_within_the_minimum_residency_is_not_demoted() -> None:
    fleet = [cpu("a", res("m", "sleeping"), res("x", "ready", settling=True))]
    with pytest.raises(NoRoom):
        plan(WANT, fleet)


def test_a_sleeper_with_no_room_anywhere_falls_back_to_a_cold_load_with_room() -> None:
    fleet = [cpu("a", res("m", "sleeping"), res("x", "ready", pinned=True)), cpu("b")]
    assert plan(WANT, fleet) == Plan("b")


def test_estimates_measure_per_model_and_neuron_then_fall_back() -> None:
    e = Estimates(cold_s=60.0, wake_s=5.0)
    assert (e.eta("m", "a", "cold"), e.eta("m", None, "wake")) == (60.0, 5.0)
    e.observe("m", "a", "wake", 1.0)
    assert e.eta("m", "a", "wake") == 1.0
    assert e.eta("m", "b", "wake") == 1.0  # no measurement on b: the model's average
    assert e.eta("other", "a", "wake") == 5.0
    e.observe("m", "a", "wake", 2.0)
    assert e.eta("m", "a", "wake") == pytest.approx(1.3)  # a moving average
    e.started("m", "a", "wake")
    coming = e.coming("m")
    assert coming is not None and coming[0] == "wake" and 0 < coming[1] <= 1.3
    e.ended("m")
    assert e.coming("m") is None
