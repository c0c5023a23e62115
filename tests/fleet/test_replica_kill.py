"""A replica killed with SIGKILL in the middle of a cold load: the neuron finishes it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
from replica_support import fleet, kill, starts, stops, wait_for


async def test_a_replica_killed_during_a_cold_load(tmp_path: Path) -> None:
    async with fleet(tmp_path, startup_delay=1.5) as f:
        for i in range(3):
            await f.load(i, f"m{i + 1}")
        await f.settled()
        await f.chat(1, "m2")
        await f.chat(2, "m3")  # m1 is the least recently used: m4 takes its place
        began = stops(f.neurons)
        asking = asyncio.create_task(f.chat(0, "m4"))

        async def loading() -> bool:
            return any(ms.get("m4") == "loading" for ms in f.truth().values())

        await wait_for("m4 loading", loading, 10)
        kill(f.replicas[0])
        with contextlib.suppress(httpx.TransportError):
            await asyncio.wait_for(asking, 5)

        async def ready() -> bool:
            return any(ms.get("m4") == "ready" for ms in f.truth().values())

        await wait_for("m4 ready", ready, 20)
        # The other replicas route to it: no second engine, nothing left half-loaded.
        assert (await f.chat(1, "m4")).status_code == 200
        assert (await f.chat(2, "m4")).status_code == 200
        assert starts(f.neurons, "m4") == 1
        assert stops(f.neurons) - began == 1
        await f.settled()
        assert sorted(m for ms in f.truth().values() for m in ms) == ["m2", "m3", "m4"]
        for replica in f.replicas[1:]:
            models = (await f.client.get(f"{replica.url}/v1/models")).json()["data"]
            where = {m["id"]: [loc["status"] for loc in m["locations"]] for m in models}
            assert where["m4"] == ["ready"] and where["m1"] == []
