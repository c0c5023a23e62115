"""Helpers for the neuron's fast tests: a real neuron app on a real port, driving fake engines.

The fake engine (``fake_engine.py``) is started exactly like vLLM (same flags, through
the same guard and supervisor); only the command prefix differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config

from neuron.app import Neuron, build, create_app
from neuron.discovery import GpuProbe
from neuron.engine.process import free_port
from neuron.settings import Harnesses, NeuronSettings, VllmHarness

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


def fake_harness(**env: str) -> VllmHarness:
    return VllmHarness(
        command=[sys.executable, str(FAKE_ENGINE)],
        startup_timeout=15,
        stop_timeout=5,
        env=env,
    )


def settings_for(**overrides: Any) -> NeuronSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "drain_timeout": 5.0,
        "harness": Harnesses(vllm=fake_harness()),
    }
    values.update(overrides)
    return NeuronSettings(**values)


def no_gpu_probe() -> GpuProbe:
    return GpuProbe(use_nvml=False, run=lambda args: "")


@dataclass
class Running:
    url: str
    neuron: Neuron
    client: httpx.AsyncClient

    async def load(self, model_id: str, **spec: Any) -> httpx.Response:
        return await self.client.post("/models/load", json={"model_id": model_id, **spec})

    async def models(self) -> dict[str, dict[str, Any]]:
        response = await self.client.get("/models")
        return {m["id"]: m for m in response.json()}


@contextlib.asynccontextmanager
async def running(
    settings: NeuronSettings, probe: GpuProbe | None = None, **client_args: Any
) -> AsyncIterator[Running]:
    """Serve ``settings`` in this event loop with Hypercorn, as the CLI does."""
    neuron = build(settings, probe=probe or no_gpu_probe())
    app = create_app(settings, neuron=neuron)
    config = Config()
    config.bind = [f"127.0.0.1:{settings.port}"]
    config.accesslog = None
    config.graceful_timeout = 2.0
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{settings.port}"
    async with httpx.AsyncClient(base_url=url, timeout=30, **client_args) as client:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                await client.get("/health")
                break
            await asyncio.sleep(0.05)
        try:
            yield Running(url=url, neuron=neuron, client=client)
        finally:
            stop.set()
            await server


def alive(pid: int) -> bool:
    """True while the process (or its process group, for a group leader) exists."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
