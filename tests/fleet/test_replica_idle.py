"""Idle unload counts every replica's use: the neuron's, not one replica's own record."""

from __future__ import annotations

import asyncio
from pathlib import Path

from replica_support import fleet, wait_for


async def test_a_model_used_through_another_replica_is_not_idle(tmp_path: Path) -> None:
    loading = {"idle_ttl": 1.0, "check_interval": 0.2}
    async with fleet(tmp_path, replicas=2, neurons=1, loading=loading, interval=0.5) as f:
        await f.load(0, "m1")
        await f.settled()
        # Only replica B is used, for three idle_ttl: replica A must not unload the model.
        for _ in range(12):
            assert (await f.chat(1, "m1")).status_code == 200
            await asyncio.sleep(0.25)
        assert f.truth() == {"n1": {"m1": "ready"}}
        # Once nobody uses it, one of them unloads it after its idle_ttl.

        async def gone() -> bool:
            return f.truth() == {"n1": {}}

        await wait_for("the idle model unloaded", gone, 10)
