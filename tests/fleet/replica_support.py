"""Several real ``cortex serve`` replicas in front of real neurons that run the stand-in engine.

The neurons run in the test's event loop (``neuron_testing.running``: the real neuron app
on a real port), each with room for one model; their engines are ``fake_engine.py``
processes, started exactly as vLLM would be. Each cortex replica is its own process with
its own ``instance`` name, the same catalogue and the same neurons, as the README's "High
availability" section asks. Everything is stopped by the context manager that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from neuron_testing import Running, fake_harness, running, settings_for

from neuron.engine.process import free_port
from neuron.settings import Harnesses, SleepSettings

ERROR_LINE = re.compile(r"^\S+ \S+ \S+ (ERROR|CRITICAL) ", re.MULTILINE)


def sample(neuron: Running, name: str, **labels: str) -> float:
    """One of the neuron's own metrics (0 when it has no such series yet)."""
    value = neuron.neuron.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def starts(neurons: list[Running], model: str) -> int:
    """Engines started for ``model`` on these neurons (ready or failed)."""
    return int(
        sum(
            sample(n, "neuron_model_load_seconds_count", model=model)
            + sample(n, "neuron_model_load_failures_total", model=model)
            for n in neurons
        )
    )


def stops(neurons: list[Running]) -> int:
    """Engines stopped by an unload or an eviction, over every model."""
    total = 0.0
    for n in neurons:
        for metric in n.neuron.metrics.registry.collect():
            for s in metric.samples:
                if s.name == "neuron_engine_exits_total" and s.labels.get("reason") == "stopped":
                    total += s.value
    return int(total)


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def errors(self) -> list[str]:
        return [m.group(0) for m in ERROR_LINE.finditer(self.log())]

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Fleet:
    neurons: list[Running]
    replicas: list[Replica]
    client: httpx.AsyncClient
    names: list[str] = field(default_factory=list)

    async def chat(self, replica: int, model: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return await self.client.post(
            f"{self.replicas[replica].url}/v1/chat/completions", json=body
        )

    async def views(self, replica: Replica) -> dict[str, dict[str, str]]:
        """Neuron name → {model: status}, as ``replica`` sees the fleet."""
        fleet = (await self.client.get(f"{replica.url}/fleet")).json()
        return {n["name"]: {m["id"]: m["status"] for m in n["models"]} for n in fleet["neurons"]}

    def truth(self) -> dict[str, dict[str, str]]:
        """Neuron name → {model: status}, as the neurons hold it."""
        return {
            name: {s.model_id: str(s.state) for s in n.neuron.registry.slots()}
            for name, n in zip(self.names, self.neurons, strict=True)
        }

    async def settled(self, timeout: float = 20.0) -> None:
        """Wait until no model is loading or unloading, and every live replica sees the truth."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            truth = self.truth()
            calm = all(
                s in ("ready", "failed", "sleeping")
                for models in truth.values()
                for s in models.values()
            )
            if calm:
                live = [r for r in self.replicas if r.alive()]
                views = await asyncio.gather(*(self.views(r) for r in live))
                if all(v == truth for v in views):
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"fleet never settled: {self.truth()}")

    async def load(self, neuron: int, model: str) -> None:
        answer = await self.neurons[neuron].load(model)
        assert answer.status_code == 200, answer.text

    async def unload_all(self) -> None:
        for n in self.neurons:
            for slot in n.neuron.registry.slots():
                answer = await n.client.post(
                    "/models/unload", json={"model_id": slot.model_id, "force": True}
                )
                assert answer.status_code in (200, 404), answer.text


def _catalogue(models: list[str]) -> str:
    return "".join(f'[[models]]\nid = "{m}"\n' for m in models)


def start_replica(
    tmp: Path,
    name: str,
    neurons: list[tuple[str, str]],
    models: list[str],
    loading: dict[str, Any] | None = None,
    **poll: Any,
) -> Replica:
    folder = tmp / name
    folder.mkdir()
    (folder / "models.toml").write_text(_catalogue(models))
    port, metrics_port = free_port(), free_port()
    poll_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in poll.items())
    config = (
        f'instance = "{name}"\nmodels_config = "{folder / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
        "drain_timeout = 2.0\n"
        f"[poll]\n{poll_lines}"
        "[loading]\nkeepalive_interval = 1.0\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in (loading or {}).items())
        + "".join(f'[[neurons]]\nname = "{n}"\nendpoint = "{url}"\n' for n, url in neurons)
    )
    (folder / "cortex.toml").write_text(config)
    log_path = folder / "cortex.log"
    executable = str(Path(sys.executable).with_name("cortex"))
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [executable, "serve", "--config", str(folder / "cortex.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, proc, port, metrics_port, log_path)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout}s")


@contextlib.asynccontextmanager
async def fleet(
    tmp: Path,
    *,
    replicas: int = 3,
    neurons: int = 3,
    models: tuple[str, ...] = ("m1", "m2", "m3", "m4"),
    startup_delay: float = 0.2,
    sleep: bool = False,
    wake_delay: float = 0.0,
    host_ram_budget_mb: int | None = None,
    loading: dict[str, Any] | None = None,
    **poll: Any,
) -> AsyncIterator[Fleet]:
    """``replicas`` cortex processes in front of ``neurons`` neurons (room for one model each).

    ``poll``: ``[poll]`` keys for every replica (default interval: 2 s, as shipped).
    ``sleep``: the neurons' residency ladder (off: an evicted model stops, as before it).
    ``host_ram_budget_mb``: the neurons' budget for sleepers (default: half of this machine's
    memory, so how many may sleep depends on the machine; a test that counts stops sets it).
    """
    budget = {} if host_ram_budget_mb is None else {"host_ram_budget_mb": host_ram_budget_mb}
    harness = fake_harness(
        FAKE_ENGINE_STARTUP_DELAY=str(startup_delay), FAKE_ENGINE_WAKE_DELAY=str(wake_delay)
    )
    async with contextlib.AsyncExitStack() as stack:
        running_neurons = [
            await stack.enter_async_context(
                running(
                    settings_for(
                        harness=Harnesses(vllm=harness),
                        max_loaded_models=1,
                        sleep=SleepSettings(enabled=sleep, **budget),
                    )
                )
            )
            for _ in range(neurons)
        ]
        names = [f"n{i + 1}" for i in range(neurons)]
        endpoints = [(n, r.url) for n, r in zip(names, running_neurons, strict=True)]
        started = [
            start_replica(
                tmp, f"cortex-{chr(ord('a') + i)}", endpoints, list(models), loading, **poll
            )
            for i in range(replicas)
        ]
        for replica in started:
            stack.callback(stop, replica.proc)
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5), limits=httpx.Limits())
        )
        for replica in started:

            async def up(r: Replica = replica) -> bool:
                assert r.alive(), f"{r.name} exited:\n{r.log()}"
                health = (await client.get(f"{r.url}/health")).json()
                return bool(health["neurons"]["up"] == neurons)

            await wait_for(f"{replica.name} up with every neuron", up)
        yield Fleet(running_neurons, started, client, names)
        for replica in started:
            assert replica.errors() == [], f"{replica.name} logged errors:\n{replica.log()}"


def kill(replica: Replica) -> None:
    os.kill(replica.proc.pid, signal.SIGKILL)
    replica.proc.wait(10)
