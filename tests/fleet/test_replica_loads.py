"""Three cortex replicas, three neurons with room for one model each: one load per cold model.

Each replica decides on its own (nothing is shared between them); the neurons are the
authority. These are the issue's proofs, each repeated ``TRIALS`` times.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from replica_support import Fleet, fleet, sample, starts, stops

TRIALS = 20
LADDER_TRIALS = 10  # the ladder-on variant: half as many, to keep the file's time down
WAKE_SOONER = {"wake_estimate": 0.05}
"""Below the stand-in engine's cold start (0.2 s): unmeasured, a wake wins."""
BURST = 50
MODELS = ("m1", "m2", "m3", "m4")


async def burst(f: Fleet, model: str, count: int = BURST, first: int = 0) -> list[int]:
    """``count`` simultaneous requests for ``model``, spread over the replicas."""
    answers = await asyncio.gather(
        *(f.chat((first + i) % len(f.replicas), model) for i in range(count))
    )
    return [a.status_code for a in answers]


async def test_a_burst_for_a_cold_model_starts_one_engine(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        for trial in range(TRIALS):
            model = MODELS[trial % len(MODELS)]
            before = starts(f.neurons, model)
            assert await burst(f, model) == [200] * BURST, f"trial {trial}"
            assert starts(f.neurons, model) - before == 1, f"trial {trial}: {f.truth()}"
            await f.settled()
            await f.unload_all()
            await f.settled()


def demotions(f: Fleet) -> int:
    """Models put to sleep (any outcome) or stopped, over every neuron and model."""
    slept = 0.0
    for n in f.neurons:
        for metric in n.neuron.metrics.registry.collect():
            for s in metric.samples:
                if s.name == "neuron_model_sleeps_total":
                    slept += s.value
    return int(slept) + stops(f.neurons)


def ledger(f: Fleet) -> list[str]:
    """Every sleep, wake, load and stop counted so far, per neuron (for a failure's message)."""
    names = {"neuron_model_sleeps_total", "neuron_model_wakes_total", "neuron_engine_exits_total"}
    names.add("neuron_model_load_seconds_count")
    return [
        f"{name}: {s.name} {s.labels} {s.value:g}"
        for name, n in zip(f.names, f.neurons, strict=True)
        for metric in n.neuron.metrics.registry.collect()
        for s in metric.samples
        if s.name in names and s.value
    ]


def arrivals(f: Fleet, model: str) -> int:
    """Engines started for ``model``, plus its wakes (a wake that failed loads afresh)."""
    wakes = sum(sample(n, "neuron_model_wakes_total", model=model, outcome="ok") for n in f.neurons)
    return starts(f.neurons, model) + int(wakes)


async def test_a_burst_that_needs_room_evicts_one_model_and_cuts_nothing(tmp_path: Path) -> None:
    await needs_room(tmp_path, sleep=False, trials=TRIALS)


async def test_with_the_ladder_a_burst_that_needs_room_demotes_one_model_and_cuts_nothing(
    tmp_path: Path,
) -> None:
    # Issue 24: with the residency ladder the same holds for wakes and demotions to sleep.
    await needs_room(tmp_path, sleep=True, trials=LADDER_TRIALS)


async def needs_room(tmp_path: Path, *, sleep: bool, trials: int) -> None:
    """Three models awake, one busy: a burst for a fourth through every replica starts (or
    wakes) it once and demotes (stops, or with ``sleep`` puts to sleep) exactly one other."""
    # Every model may sleep on every neuron (a sleeper stopped for another's room would count
    # as a second demotion), and a wake is expected sooner than a cold load until one is
    # measured, so that the burst is a choice between a wake and a cold load.
    async with fleet(
        tmp_path, sleep=sleep, host_ram_budget_mb=len(MODELS) * 4096, loading=WAKE_SOONER
    ) as f:
        for i in range(3):
            await f.load(i, MODELS[i])
        await f.settled()
        for trial in range(trials):
            awake = [m for ms in f.truth().values() for m, s in ms.items() if s == "ready"]
            cold = next(m for m in MODELS if m not in awake)
            order = awake[trial % 3 :] + awake[: trial % 3]
            busy, older, newer = order
            # A long request on one model (in flight throughout), then the others are used
            # through different replicas: each replica last used a different model.
            held = asyncio.create_task(f.chat(trial % 3, busy, fake_sleep=1.5))
            for replica, model in ((1, older), (2, newer)):
                await asyncio.sleep(0.05)
                assert (await f.chat((trial + replica) % 3, model)).status_code == 200
            began_arrivals, began_demotions = arrivals(f, cold), demotions(f)
            assert await burst(f, cold, first=trial) == [200] * BURST, f"trial {trial}"
            assert arrivals(f, cold) - began_arrivals == 1, f"trial {trial}: {f.truth()}"
            assert demotions(f) - began_demotions == 1, f"trial {trial}: {f.truth()} {ledger(f)}"
            if not sleep:
                assert starts(f.neurons, cold) - began_arrivals == 1, f"trial {trial}"
            assert (await held).status_code == 200, f"trial {trial}: the busy model was cut"
            awake_now = {m for ms in f.truth().values() for m, s in ms.items() if s == "ready"}
            if sleep:  # a wake makes room where the sleeper is, whichever model is there
                assert {busy, cold} <= awake_now, f"trial {trial}: {f.truth()}"
                assert len(awake_now) == 3, f"trial {trial}: {f.truth()}"
            else:  # a cold load evicts the least recently used, by the neurons' account
                assert awake_now == {busy, newer, cold}, f"trial {trial}: {f.truth()}"
            await f.settled()


async def test_two_cold_models_at_once_on_a_full_fleet(tmp_path: Path) -> None:
    models = ("m1", "m2", "m3", "m4", "m5")
    async with fleet(tmp_path, models=models) as f:
        for i in range(3):
            await f.load(i, models[i])
        await f.settled()
        for trial in range(TRIALS // 2):
            loaded = [m for ms in f.truth().values() for m in ms]
            first, second = (m for m in models if m not in loaded)
            busy = loaded[trial % 3]
            held = asyncio.create_task(f.chat(2, busy, fake_sleep=1.5))
            await asyncio.sleep(0.1)
            before = {m: starts(f.neurons, m) for m in models}
            answers = await asyncio.gather(
                burst(f, first, 10, first=0), burst(f, second, 10, first=1)
            )
            assert answers == [[200] * 10, [200] * 10], f"trial {trial}"
            assert (await held).status_code == 200, f"trial {trial}: the busy model was cut"
            after = {m: starts(f.neurons, m) - before[m] for m in models}
            assert after == {m: int(m in (first, second)) for m in models}, f"trial {trial}"
            loaded_now = sorted(m for ms in f.truth().values() for m in ms)
            assert loaded_now == sorted({busy, first, second}), f"trial {trial}: {f.truth()}"
            await f.settled()
