"""Placement and eviction as pure functions over fleet snapshots."""

from __future__ import annotations

import pytest

from cortex.fleet.placement import (
    Candidate,
    Device,
    NeverFits,
    NoRoom,
    Plan,
    Resident,
    Want,
    plan,
    rendezvous,
    victims,
)


def gpu(index: int, free: int, total: int = 80000) -> Device:
    return Device(index, total, free)


def ready(model: str, used: float = 0.0, **kw: object) -> Resident:
    return Resident(model, "ready", last_used=used, **kw)  # type: ignore[arg-type]


def cpu(name: str, *residents: Resident, limit: int | None = 1) -> Candidate:
    return Candidate(name, max_models=limit, residents=residents)


WANT = Want("new")

PLANS = [
    pytest.param(WANT, [cpu("a", ready("x")), cpu("b")], Plan("b"), id="fits-now-beats-evicting"),
    pytest.param(
        WANT,
        [cpu("a", ready("x", 10.0)), cpu("b", ready("y", 5.0))],
        Plan("b", ("y",)),
        id="evicts-the-least-recently-used",
    ),
    pytest.param(
        WANT,
        [cpu("a", ready("x", 1.0, priority=5)), cpu("b", ready("y", 9.0))],
        Plan("b", ("y",)),
        id="lowest-priority-first-whatever-its-age",
    ),
    pytest.param(
        WANT,
        [cpu("a", ready("x", 1.0, in_flight=1)), cpu("b", ready("y", 9.0))],
        Plan("b", ("y",)),
        id="in-flight-is-never-evicted",
    ),
    pytest.param(
        WANT,
        [cpu("a", ready("x", 1.0, pinned=True)), cpu("b", ready("y", 9.0))],
        Plan("b", ("y",)),
        id="pinned-is-never-evicted",
    ),
    pytest.param(
        Want("new", pinned_on=frozenset({"b"})),
        [cpu("a"), cpu("b", ready("y"))],
        Plan("b", ("y",)),
        id="pinned-neuron-first-even-if-it-must-evict",
    ),
    pytest.param(
        WANT,
        [cpu("a", ready("x"), limit=2), cpu("b", limit=2)],
        Plan("b"),
        id="tie-then-fewest-models",
    ),
    pytest.param(
        WANT,
        [cpu("a", Resident("new", "loading")), cpu("b")],
        Plan("a", joins=True),
        id="joins-a-load-in-progress",
    ),
    pytest.param(
        WANT,
        [cpu("a", ready("x", 1.0), ready("y", 2.0), limit=2)],
        Plan("a", ("x",)),
        id="evicts-only-as-many-as-needed",
    ),
    pytest.param(
        Want("new", vram_mb=30000),
        [
            Candidate("a", (gpu(0, 20000),), residents=(ready("x"),)),
            Candidate("b", (gpu(0, 40000),)),
        ],
        Plan("b"),
        id="fits-in-free-vram",
    ),
    pytest.param(
        Want("new", vram_mb=30000),
        [
            Candidate(
                "a",
                (gpu(0, 5000),),
                residents=(
                    Resident("x", "ready", 30000, (0,), last_used=2.0),
                    Resident("y", "ready", 20000, (0,), last_used=1.0),
                    Resident("z", "ready", 20000, (0,), last_used=3.0),
                ),
            )
        ],
        Plan("a", ("y", "x")),
        id="evicts-lru-until-the-vram-is-free",
    ),
    pytest.param(
        Want("new", vram_mb=60000, tensor_parallel=2),
        [
            Candidate("a", (gpu(0, 30000), gpu(1, 29000))),
            Candidate("b", (gpu(0, 30000), gpu(1, 30000))),
        ],
        Plan("b"),
        id="tensor-parallel-needs-each-share",
    ),
    pytest.param(
        Want("new", min_devices=2),
        [Candidate("a", (gpu(0, 80000),)), Candidate("b", (gpu(0, 1), gpu(1, 1)))],
        Plan("b"),
        id="too-few-devices-never",
    ),
    pytest.param(
        Want("new", min_device_vram_mb=40000),
        [Candidate("a", (gpu(0, 24000, 24000),)), Candidate("b", (gpu(0, 1000),))],
        Plan("b"),
        id="devices-too-small-never",
    ),
    pytest.param(
        Want("new", harness="sglang"),
        [Candidate("a", harnesses=("vllm",)), Candidate("b", harnesses=("vllm", "sglang"))],
        Plan("b"),
        id="harness-must-exist",
    ),
    pytest.param(
        WANT,
        [cpu("a", Resident("x", "failed"))],
        Plan("a"),
        id="a-failed-model-holds-no-room",
    ),
]


@pytest.mark.parametrize(("want", "candidates", "expected"), PLANS)
def test_plan(want: Want, candidates: list[Candidate], expected: Plan) -> None:
    assert plan(want, candidates) == expected


NEVER = [
    pytest.param(Want("new", min_devices=1), [cpu("a")], "a: needs 1 GPU(s), has 0", id="cpu-host"),
    pytest.param(
        Want("new", vram_mb=100000),
        [Candidate("a", (gpu(0, 80000),))],
        "a: needs 100000 MiB over 1 GPU(s)",
        id="bigger-than-any-gpu",
    ),
    pytest.param(
        Want("new", min_device_vram_mb=40000),
        [Candidate("a", (gpu(0, 24000, 24000),))],
        "a: no GPU with 40000 MiB",
        id="gpu-too-small",
    ),
    pytest.param(WANT, [], "no neuron is up", id="empty-fleet"),
]


@pytest.mark.parametrize(("want", "candidates", "reason"), NEVER)
def test_never_fits_says_why(want: Want, candidates: list[Candidate], reason: str) -> None:
    with pytest.raises(NeverFits, match="no neuron can hold new") as caught:
        plan(want, candidates)
    assert reason in str(caught.value)


NO_ROOM = [
    pytest.param([cpu("a", ready("x", in_flight=2))], id="busy"),
    pytest.param([cpu("a", ready("x", pinned=True))], id="pinned"),
    pytest.param([cpu("a", Resident("x", "loading"))], id="loading"),
    pytest.param([cpu("a", Resident("x", "unloading"))], id="unloading"),
    pytest.param(
        [Candidate("a", (gpu(0, 1000),), residents=(ready("x", vram_mb=1000, devices=(0,)),))],
        id="vram-even-after-evicting",
    ),
]


@pytest.mark.parametrize("candidates", NO_ROOM)
def test_no_room_now(candidates: list[Candidate]) -> None:
    want = Want("new", vram_mb=30000) if candidates[0].devices else WANT
    with pytest.raises(NoRoom, match="no room for new"):
        plan(want, candidates)


def test_victims_order_is_priority_then_age_then_name() -> None:
    cand = cpu(
        "a",
        ready("old-important", 1.0, priority=9),
        ready("b-new", 5.0),
        ready("a-new", 5.0),
        ready("old", 2.0),
        limit=2,
    )
    chosen = victims(WANT, cand)
    assert chosen is not None
    assert [r.id for r in chosen] == ["old", "a-new", "b-new"]


def test_replicas_that_see_the_same_fleet_choose_the_same_neuron() -> None:
    """Equal neurons: the rendezvous hash of (model, neuron) decides, whatever the order."""
    names = [f"n{i}" for i in range(6)]
    chosen = {}
    for model in (f"model-{i}" for i in range(40)):
        cands = [cpu(n) for n in names]
        first = plan(Want(model), cands).node
        assert plan(Want(model), list(reversed(cands))).node == first
        assert first == max(names, key=lambda n: rendezvous(model, n))
        chosen[model] = first
    assert len(set(chosen.values())) >= 4, "cold models spread over equal neurons"


def test_fewest_models_goes_before_the_hash() -> None:
    emptier, fuller = cpu("a", limit=2), cpu("b", ready("x"), limit=2)
    assert plan(Want("new"), [fuller, emptier]).node == "a"
