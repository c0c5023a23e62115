"""Helpers for the neuron's fast tests: a real neuron app on a real port, driving fake engines.

The fake engine (``fake_engine.py``) is started exactly like vLLM (same flags, through
the same guard and supervisor); only the command prefix differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypercorn.config import Config

from neuron.app import Neuron, build, create_app
from neuron.discovery import GpuProbe
from neuron.engine import process
from neuron.settings import Harnesses, NeuronSettings, VllmHarness

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


def worker_ports(part: int) -> tuple[int, int]:
    """This test process's own ports (both ends included): the private range (20000 up to the
    kernel's ephemeral range) cut into one slice per pytest-xdist worker, and each slice in
    two: ``part`` 0 for the servers a test starts, 1 for the engines its neurons start.

    A port is picked free, then bound later (a server subprocess after its start; an engine
    once it is up): in between, another worker picking from the same ports could take it,
    and one of the two fails with "address already in use" (CI saw it). Cut this way, no two
    workers, and no server and engine, pick from the same ports. cortex's tests cut the same
    way (``cortex_testing.worker_ports``)."""
    low = process.PRIVATE_PORTS_FROM
    high = max(process._ephemeral_low(), low + 2048)  # (a kernel with no room below: any)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = (high - low) // max(count, 1) // 2
    first = low + (2 * worker + part) * span
    return first, first + span - 1


def free_port() -> int:
    """A free port for a server a test starts, from this worker's own ports (handed out in
    turn, as the neuron hands out its engines' ports)."""
    return process.free_port(worker_ports(0))


def errors_logged(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    """Fail the test if a ``neuron`` logger or ``asyncio`` logged an ERROR during it, other
    than what its ``logs_error(text)`` markers allow (for the neuron's conftest fixtures)."""
    allowed = [str(marker.args[0]) for marker in request.node.iter_markers("logs_error")]
    errors = [
        record
        for when in ("setup", "call")
        for record in caplog.get_records(when)  # type: ignore[arg-type]
        if record.levelno >= logging.ERROR
        and (record.name == "asyncio" or record.name.split(".")[0] == "neuron")
        and not any(text in _said(record) for text in allowed)
    ]
    if errors:
        pytest.fail(
            "the neuron logged an ERROR: " + "; ".join(f"{r.name}: {_said(r)}" for r in errors),
            pytrace=False,
        )


def _said(record: logging.LogRecord) -> str:
    """A record's message and the exception it carries, if any."""
    exc = record.exc_info[1] if record.exc_info else None
    return record.getMessage() if exc is None else f"{record.getMessage()}: {exc!r}"


def fake_harness(**env: str) -> VllmHarness:
    return VllmHarness(
        command=[sys.executable, str(FAKE_ENGINE)],
        startup_timeout=15,
        stop_timeout=5,
        env=env,
        engine_ports=worker_ports(1),
        # Where the fake engine's missing models are: a load from there starts and fails.
        allowed_paths=["/nonexistent"],
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
    """Serve ``settings`` in this event loop with the neuron's listener, as the CLI does."""
    neuron = build(settings, probe=probe or no_gpu_probe())
    app = create_app(settings, neuron=neuron)
    config = Config()
    config.bind = [f"127.0.0.1:{settings.port}"]
    config.accesslog = None
    config.graceful_timeout = 2.0
    # As the CLI sets them: with Hypercorn's 5 s keep-alive, a client pooling connections
    # longer (cortex keeps them 60 s) sends on one the neuron is closing at that moment, and
    # gets no answer; and a burst of new connections overflows a backlog of 100.
    config.keep_alive_timeout = 75.0
    config.backlog = 4096
    stop = asyncio.Event()
    server = asyncio.create_task(neuron.listener.serve(app, config, shutdown_trigger=stop.wait))
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


class NeuronProcess:
    """A real ``neuron`` process (the console script) with a config file, for signal tests."""

    def __init__(self, tmp: Path, config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "neuron.toml"
        self.config.write_text(config)
        self.log = tmp / "neuron.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, group: int | None = None) -> subprocess.Popen[bytes]:
        """Start it (with ``group`` as its group, when given: the tests must run as root)."""
        neuron = Path(sys.executable).with_name("neuron")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(neuron), "--config", str(self.config), "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                group=group,
            )
        return self.proc

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 60) -> None:
        for _ in range(int(timeout / 0.1)):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{self.url}/health")).json()["status"] == "ready":
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"neuron never ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def fake_engine_config(*models: str, drain_timeout: float = 10, **env: str) -> str:
    """A neuron.toml that serves ``models`` (as default models) with the fake engine."""
    command = json.dumps([sys.executable, str(FAKE_ENGINE)])
    env_table = ", ".join(f'{k} = "{v}"' for k, v in env.items())
    text = f"""host = "127.0.0.1"
drain_timeout = {drain_timeout}
[harness.vllm]
command = {command}
startup_timeout = 15
stop_timeout = 5
engine_ports = {list(worker_ports(1))}
env = {{ {env_table} }}
"""
    return text + "".join(f'[[default_models]]\nmodel_id = "{m}"\n' for m in models)
