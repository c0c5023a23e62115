"""Two cortex replicas in front of two neurons: how evenly a skewed load lands, measured.

Usage: .venv/bin/python bench/balance.py [--rounds 3] [--seconds 4]

Real cortex replicas (``build`` + ``create_app`` on real ports) in front of two fake neurons
(``cortex/tests/fake_neuron.py``), against the wall clock. A load balancer gives replica A
nine clients out of ten and replica B one. B's client runs one long generation; A's nine send
short requests (0.1 s) with pauses (0.3 s) between them. Each replica sees only its own
requests in flight, so under the in-flight rule (what neurons that report no engine load get)
A splits its requests evenly and B's long request makes its neuron the busier one for as long
as it runs. With the engines' ``running`` in ``/models``, A sees B's request there and sends
its own to the other neuron.

Load is what the neurons count themselves (inference requests being answered), sampled every
10 ms through the run and averaged. The figure is the imbalance: the busier neuron's average
over the mean of the two (1.0 is perfectly even). The same scenario, in whole ticks through
the routing function with no clock, is the test ``cortex/tests/test_replica_balance.py``.

Prints one JSON line per round and rule, then a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cortex" / "tests"))
from cortex_testing import free_port, served
from fake_neuron import FakeNeuron

from cortex.app import build, create_app
from cortex.settings import Catalogue, CortexSettings

SHORT, PAUSE = 0.1, 0.3


@contextlib.asynccontextmanager
async def fleet(report_load: bool) -> AsyncIterator[tuple[list[FakeNeuron], list[str]]]:
    """Two fake neurons serving m1, and two cortex replicas in front of both."""
    fakes = [FakeNeuron(name, report_load=report_load) for name in ("n1", "n2")]
    ports = [free_port() for _ in fakes]
    neurons = [
        {"name": f.name, "endpoint": f"http://127.0.0.1:{p}"}
        for f, p in zip(fakes, ports, strict=True)
    ]
    settings = CortexSettings(
        neurons=neurons,
        poll={"interval": 0.05, "timeout": 1},
        gateway={"connect_timeout": 1, "idle_timeout": 10},
    )
    gateways = [build(settings, Catalogue(models=[])) for _ in range(2)]
    api = [free_port() for _ in gateways]
    async with contextlib.AsyncExitStack() as stack:
        for gateway in gateways:
            stack.push_async_callback(gateway.session.close)
        await stack.enter_async_context(
            served(
                *[(f.app(), p) for f, p in zip(fakes, ports, strict=True)],
                *[(create_app(g), p) for g, p in zip(gateways, api, strict=True)],
            )
        )
        yield fakes, [f"http://127.0.0.1:{p}" for p in api]


async def client(url: str, sleep: float, pause: float, until: float, late: float = 0) -> None:
    await asyncio.sleep(late)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while time.monotonic() < until:
            body = {"model": "m1", "fake_sleep": sleep}
            response = await http.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text}")
            await asyncio.sleep(pause)


async def average_load(report_load: bool, run: float) -> tuple[float, float]:
    """Each neuron's requests being answered, averaged over the run."""
    async with fleet(report_load) as (fakes, (a, b)):
        until = time.monotonic() + run
        long_one = asyncio.create_task(client(b, run + 1.0, 0, until))
        await asyncio.sleep(0.2)  # B's long request is running, and polled
        # Staggered over one cycle, so A's requests come steadily and not in bursts.
        cycle = SHORT + PAUSE
        short = [
            asyncio.create_task(client(a, SHORT, PAUSE, until, late=i * cycle / 9))
            for i in range(9)
        ]
        await asyncio.sleep(cycle)  # all nine have started
        totals, samples = [0, 0], 0
        while time.monotonic() < until:
            for i, fake in enumerate(fakes):
                totals[i] += fake.running.get("m1", 0)
            samples += 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*short)
        long_one.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await long_one
    return totals[0] / samples, totals[1] / samples


def imbalance(loads: tuple[float, float]) -> float:
    """The busier neuron's load over the even share (1.0 is perfectly even)."""
    return max(loads) / (sum(loads) / 2)


async def main(rounds: int, seconds: float) -> None:
    results: dict[str, list[float]] = {"engine load": [], "in flight": []}
    for round_ in range(rounds):
        for rule, report_load in (("engine load", True), ("in flight", False)):
            loads = await average_load(report_load, seconds)
            results[rule].append(imbalance(loads))
            line = {"round": round_, "rule": rule, "loads": loads, "imbalance": imbalance(loads)}
            print(json.dumps(line))
    print(f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("\n| rule | imbalance, median (min-max) |\n|---|---|")
    for rule, figures in results.items():
        low, mid, high = min(figures), statistics.median(figures), max(figures)
        print(f"| {rule} | {mid:.3f} ({low:.3f}-{high:.3f}) |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one run")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.seconds))
