"""The neuron dies by SIGKILL (no chance to clean up): its engine must not survive it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    ENGINE_START_TIMEOUT,
    NeuronProcess,
    async_wait_group_gone,
    client,
    engine_groups,
    free_port,
    list_models,
    neuron_running,
    record,
    tiny_spec,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ORPHAN_DEADLINE = 20.0


@pytest.fixture
def neuron(tiny_model: Path, tmp_path: Path) -> Iterator[NeuronProcess]:
    config = write_config(
        tmp_path / "neuron.toml", port=free_port(), default_models=[tiny_spec(tiny_model)]
    )
    with neuron_running(config, tmp_path / "neuron.log") as running:
        yield running


async def test_engine_does_not_outlive_a_killed_neuron(neuron: NeuronProcess) -> None:
    await asyncio.to_thread(neuron.wait_ready, ENGINE_START_TIMEOUT)
    async with client(neuron) as c:
        tiny = (await list_models(c, neuron))["tiny"]
    assert tiny["status"] == "ready"
    ready = re.search(r"default model tiny ready in ([\d.]+)s", neuron.log())
    assert ready, "no 'default model tiny ready in' line in the log"
    record("engine start: tiny (default model of the neuron killed)", float(ready.group(1)))
    pgid, engine_url = tiny["engine"]["pid"], tiny["engine"]["url"]
    assert engine_groups(neuron.pid) == {pgid}
    async with httpx.AsyncClient(timeout=10) as direct:
        assert (await direct.get(f"{engine_url}/health")).status_code == 200

    os.kill(neuron.pid, signal.SIGKILL)
    assert await asyncio.to_thread(neuron.proc.wait, 10) == -signal.SIGKILL
    gone = await async_wait_group_gone(pgid, ORPHAN_DEADLINE)
    assert gone is not None, f"engine group {pgid} still alive {ORPHAN_DEADLINE:g}s after"
    record("neuron SIGKILL → orphaned engine group gone", gone)

    assert engine_groups(neuron.pid) == set()
    async with httpx.AsyncClient(timeout=5) as direct:
        with pytest.raises(httpx.TransportError):
            await direct.get(f"{engine_url}/health")
