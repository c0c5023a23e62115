"""A load started through one replica shows in another's ``/v1/models`` within milliseconds."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from replica_support import Fleet, fleet, starts


async def seen_after(f: Fleet, model: str) -> float:
    """Load ``model`` through replica 0; an upper bound of the seconds from the neuron's
    ``ready`` until replica 1 lists it ready: from the last look at the neuron that did not
    show it ready to the end of the first look at replica 1 that does."""
    other = f.replicas[1].url
    asking = asyncio.create_task(f.chat(0, model))
    not_ready = time.monotonic()
    while True:
        began = time.monotonic()
        if not any(ms.get(model) == "ready" for ms in f.truth().values()):
            not_ready = began
        else:
            data = (await f.client.get(f"{other}/v1/models")).json()["data"]
            where = {m["id"]: [loc["status"] for loc in m["locations"]] for m in data}
            if "ready" in where.get(model, []):
                break
        await asyncio.sleep(0.001)
    seen = time.monotonic()
    assert (await asking).status_code == 200
    return seen - not_ready


async def test_a_load_through_one_replica_shows_in_another_at_once(tmp_path: Path) -> None:
    # Polls every 30 s: only the watch can make it this fast.
    async with fleet(tmp_path, replicas=2, neurons=2, interval=30.0) as f:
        lags = []
        for model in ("m1", "m2", "m3", "m4"):
            lags.append(await seen_after(f, model))
            # Routing sees it too: a request through the other replica starts nothing.
            before = starts(f.neurons, model)
            assert (await f.chat(1, model)).status_code == 200
            assert starts(f.neurons, model) == before
        assert statistics.median(lags) < 0.1, lags
