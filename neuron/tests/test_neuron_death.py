"""If the neuron dies abruptly (kill -9), its engines must not survive it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from neuron_testing import NeuronProcess, fake_engine_config, kill_group, wait_gone


async def test_kill_9_of_the_neuron_takes_its_engines_down(tmp_path: Path) -> None:
    neuron = NeuronProcess(tmp_path, fake_engine_config("m1", "m2"))
    proc = neuron.start()
    pids: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=neuron.url, timeout=30) as client:
            await neuron.wait_ready(client)
            pids = [m["engine"]["pid"] for m in (await client.get("/models")).json()]
        assert len(pids) == 2
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        gone = await asyncio.gather(*(wait_gone(pid, timeout=15) for pid in pids))
        assert all(gone), "an engine outlived its neuron"
    finally:
        neuron.stop()
        for pid in pids:
            kill_group(pid)
