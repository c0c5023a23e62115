"""Helpers for cortex's fast tests: fake neurons and a real cortex, each on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fake_neuron import FakeNeuron

from cortex.app import Api, Gateway, build, create_app, create_metrics_app
from cortex.cli import limits
from cortex.server import bind, serve
from cortex.settings import Catalogue, CatalogueModel, CortexSettings


def worker_ports() -> tuple[int, int]:
    """The ports this test process's servers are picked from (both ends included): the part
    for servers of this pytest-xdist worker's slice of the private range (20000 up to the
    kernel's ephemeral range), cut as ``neuron_testing.worker_ports(0)`` cuts it (cortex's
    tests run without neuron, so the cut is repeated here). No two workers, and no server
    and engine, pick from the same ports: a port picked free and bound a moment later cannot
    be taken meanwhile by another worker's pick."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 0
    low = 20000
    high = max(ephemeral, low + 2048)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = (high - low) // max(count, 1) // 2
    first = low + 2 * worker * span
    return first, first + span - 1


_turn = itertools.count(secrets.randbelow(1 << 16))
"""Where :func:`free_port` looks next: ports are handed out in turn, not at random, so that
two picks a moment apart (several servers of one test, bound only after all are picked)
never get the same port."""


def free_port() -> int:
    """A free loopback port for a server a test starts, from :func:`worker_ports`, in turn."""
    low, high = worker_ports()
    size = high - low + 1
    for _ in range(size):
        port = low + next(_turn) % size
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {low}-{high}")


@contextlib.asynccontextmanager
async def served(
    *apps: tuple[Any, int] | tuple[Any, int, dict[str, Any]], graceful: float = 1.0
) -> AsyncIterator[None]:
    """Serve each ``(app, port)`` the way ``cortex serve`` does (cortex's server and settings).

    All of them stop together, so that the drains overlap. A third item holds more keyword
    arguments for that app's :func:`cortex.server.serve` (``limits``, ``on_count``,
    ``graceful``).
    """
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            serve(
                app[0],
                bind(f"127.0.0.1:{app[1]}"),
                stop=stop,
                lifespan=True,
                direct=app[0].direct if isinstance(app[0], Api) else None,
                **({"graceful": graceful} | (app[2] if len(app) == 3 else {})),
            )
        )
        for app in apps
    ]
    try:
        for _, port, *_ in apps:
            # The socket listens before the app has started; an answer means it has.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /-/started HTTP/1.0\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            assert line.startswith(b"HTTP/1.1 "), line
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@dataclass
class Running:
    gateway: Gateway
    client: httpx.AsyncClient
    metrics_url: str
    neurons: dict[str, FakeNeuron]

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(self.metrics_url)).text

    async def poll(self) -> None:
        await self.gateway.poller.poll_once()

    async def housekeeping(self) -> None:
        await self.gateway.loader.housekeeping()


@contextlib.asynccontextmanager
async def cortex(
    *fakes: FakeNeuron,
    dead: tuple[str, ...] = (),
    catalogue: tuple[str | dict[str, Any], ...] = (),
    graceful: float = 1.0,
    **settings: Any,
) -> AsyncIterator[Running]:
    """A cortex in front of ``fakes`` (served) and ``dead`` (names pointing at closed ports)."""
    ports = {f.name: free_port() for f in fakes} | {name: free_port() for name in dead}
    values: dict[str, Any] = {
        "neurons": [{"name": n, "endpoint": f"http://127.0.0.1:{p}"} for n, p in ports.items()],
        "poll": {"interval": 30, "timeout": 1, "down_after": 2},
        "gateway": {"connect_timeout": 1, "idle_timeout": 5},
    }
    for key, value in settings.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    entries = [CatalogueModel(**({"id": m} if isinstance(m, str) else m)) for m in catalogue]
    gateway = build(CortexSettings(**values), Catalogue(models=entries))
    api_port, metrics_port = free_port(), free_port()
    async with contextlib.AsyncExitStack() as stack:
        # The lifespan closes it; this also does when the servers never started.
        stack.push_async_callback(gateway.session.close)
        await stack.enter_async_context(
            served(
                # The neurons drain for longer, so that the gateway's drain is the one seen.
                *[(fake.app(), ports[fake.name], {"graceful": graceful + 0.5}) for fake in fakes],
                (
                    create_app(gateway),
                    api_port,
                    {
                        "limits": limits(gateway.settings),
                        "on_count": gateway.metrics.client_connections.set,
                    },
                ),
                (create_metrics_app(gateway), metrics_port),
                graceful=graceful,
            )
        )
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
        )
        yield Running(
            gateway=gateway,
            client=client,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            neurons={f.name: f for f in fakes},
        )


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def value(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in a Prometheus text ``metrics`` whose labels
    include ``labels`` (0 if none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
