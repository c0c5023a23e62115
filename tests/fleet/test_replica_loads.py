"""Three cortex replicas, three neurons with room for one model each: one load per cold model.

Each replica decides on its own (nothing is shared between them); the neurons are the
authority. These are the issue's proofs, each repeated ``TRIALS`` times.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from replica_support import Fleet, fleet, starts, stops

TRIALS = 20
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


async def test_a_burst_that_needs_room_evicts_one_model_and_cuts_nothing(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        for i in range(3):
            await f.load(i, MODELS[i])
        await f.settled()
        for trial in range(TRIALS):
            loaded = [m for models in f.truth().values() for m in models]
            cold = next(m for m in MODELS if m not in loaded)
            order = loaded[trial % 3 :] + loaded[: trial % 3]
            busy, older, newer = order
            # A long request on one model (in flight throughout), then the others are used
            # through different replicas: each replica last used a different model.
            held = asyncio.create_task(f.chat(trial % 3, busy, fake_sleep=1.5))
            for replica, model in ((1, older), (2, newer)):
                await asyncio.sleep(0.05)
                assert (await f.chat((trial + replica) % 3, model)).status_code == 200
            began_starts, began_stops = starts(f.neurons, cold), stops(f.neurons)
            assert await burst(f, cold, first=trial) == [200] * BURST, f"trial {trial}"
            assert starts(f.neurons, cold) - began_starts == 1, f"trial {trial}: {f.truth()}"
            assert stops(f.neurons) - began_stops == 1, f"trial {trial}: {f.truth()}"
            assert (await held).status_code == 200, f"trial {trial}: the busy model was cut"
            loaded_now = {m for models in f.truth().values() for m in models}
            assert loaded_now == {busy, newer, cold}, f"trial {trial}: {f.truth()}"
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
