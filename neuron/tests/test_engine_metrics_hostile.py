"""An engine's ``/metrics`` cannot break or stall the neuron: a number that is not a count
(NaN, +Inf, negative) becomes unknown (``null``) instead of failing the neuron's ``/metrics``
with 500; a body over ``engine_metrics_max_bytes`` is not read past the cap and gives nothing;
a large one is parsed off the event loop, so the neuron keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from neuron_testing import fake_harness, running, settings_for
from prometheus_client.parser import text_string_to_metric_families

from neuron.settings import Harnesses


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf", "-3.0"])
async def test_a_gauge_that_is_not_a_count_is_unknown(value: str) -> None:
    harness = fake_harness(FAKE_ENGINE_RUNNING_VALUE=value)
    async with running(settings_for(harness=Harnesses(vllm=harness), health_interval=0.1)) as n:
        await n.load("m1")
        response = await n.client.get("/metrics")
        assert response.status_code == 200
        assert "neuron_models" in response.text
        await asyncio.sleep(0.3)  # a few rounds of the /models refresh
        info = (await n.models())["m1"]
        assert (info["running"], info["waiting"], info["kv_cache_usage"]) == (None, 0, 0.0)


async def test_a_body_over_the_cap_gives_nothing_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = fake_harness(FAKE_ENGINE_METRICS_PADDING="2000")  # about 110 KB
    settings = settings_for(
        harness=Harnesses(vllm=harness), health_interval=0.1, engine_metrics_max_bytes=64 * 1024
    )
    async with running(settings) as n:
        await n.load("m1")
        with caplog.at_level(logging.WARNING, logger="neuron.watch"):
            for _ in range(3):
                response = await n.client.get("/metrics")
                assert response.status_code == 200
                assert "vllm:" not in response.text
            await asyncio.sleep(0.3)
        info = (await n.models())["m1"]
        assert (info["status"], info["running"]) == ("ready", None)
        over = [r for r in caplog.records if "engine_metrics_max_bytes" in r.getMessage()]
        assert len(over) == 1, [r.getMessage() for r in caplog.records]


async def test_a_large_exposition_does_not_stall_the_neuron() -> None:
    harness = fake_harness(FAKE_ENGINE_METRICS_PADDING="40000")  # about 2.3 MB
    async with running(settings_for(harness=Harnesses(vllm=harness), health_interval=60)) as n:
        await n.load("m1")
        stalls: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                began = time.monotonic()
                await asyncio.sleep(0.01)
                stalls.append(time.monotonic() - began)

        ticker = asyncio.create_task(tick())
        response = await n.client.get("/metrics")
        done.set()
        await ticker
        assert response.status_code == 200
        families = {f.name for f in text_string_to_metric_families(response.text)}
        assert "vllm:fake_padding" in families
        assert max(stalls) < 0.5, f"the event loop stalled for {max(stalls):.2f} s"


async def test_the_load_refresh_reuses_a_scrape_just_made() -> None:
    """While Prometheus scrapes the neuron more often than ``health_interval``, those scrapes
    also refresh ``/models``: the engines are not read a second time for it."""
    harness = fake_harness(FAKE_ENGINE_COUNT_SCRAPES="1")
    async with running(settings_for(harness=Harnesses(vllm=harness), health_interval=0.5)) as n:
        await n.load("m1")
        labels = (("engine", "0"), ("model", "m1"), ("model_name", "m1"))
        reads = []
        for _ in range(30):
            s = samples((await n.client.get("/metrics")).text)
            reads.append(s["vllm:fake_scrapes_total", labels])
            await asyncio.sleep(0.1)
        # Of the engine's reads after our first scrape, all but one (a refresh racing in)
        # were our scrapes; without the reuse, one more every 0.5 s (about 7).
        assert reads[-1] - reads[0] <= len(reads), reads
