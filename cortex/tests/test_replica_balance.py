"""Two cortex replicas in front of two neurons balance a skewed load by the engines' numbers.

The load balancer in front gives replica A nine clients out of ten and replica B one. B's
client runs one long generation; A's nine send short requests with pauses between them. Each
replica sees only its own requests in flight, so under the in-flight rule (what neurons that
report no engine load still get) A splits its requests evenly and B's long request makes its
neuron the busier one for as long as it runs. With the engines' ``running`` in ``/models``, A
sees B's request there and sends its own to the other neuron.

Load is what the neurons count themselves (inference requests being answered), sampled
through the run and averaged; "within 20% of even" means the busier neuron's average is at
most 1.2 times the mean of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
from cortex_testing import free_port, served
from fake_neuron import FakeNeuron

from cortex.app import build, create_app
from cortex.settings import Catalogue, CortexSettings

RUN = 4.0
SHORT, PAUSE, LONG = 0.1, 0.3, RUN + 1.0


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
            assert response.status_code == 200, response.text
            await asyncio.sleep(pause)


async def average_load(report_load: bool) -> tuple[float, float]:
    """Each neuron's requests being answered, averaged over the run."""
    async with fleet(report_load) as (fakes, (a, b)):
        until = time.monotonic() + RUN
        long_one = asyncio.create_task(client(b, LONG, 0, until))
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


async def test_two_replicas_balance_a_skewed_load_by_the_engines_numbers() -> None:
    loads = await average_load(report_load=True)
    assert imbalance(loads) <= 1.2, loads


async def test_the_in_flight_rule_alone_does_not() -> None:
    loads = await average_load(report_load=False)
    assert imbalance(loads) > 1.2, loads
