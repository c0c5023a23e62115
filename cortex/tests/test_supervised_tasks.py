"""A background task that crashes is logged with its traceback and started again."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

from cortex.supervisor import supervise


async def test_a_crashing_task_is_restarted_with_a_growing_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[float] = []
    running = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def flaky() -> None:
        starts.append(loop.time())
        if len(starts) <= 3:
            raise RuntimeError(f"crash {len(starts)}")
        running.set()
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR, "cortex.supervisor"):
        task = asyncio.create_task(supervise("flaky", flaky, backoff=0.05, max_backoff=1.0))
        await asyncio.wait_for(running.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4
    assert min(gaps) > 0.04 and gaps[2] > 0.19  # 0.05, 0.1, 0.2: doubling
    crashes = [r for r in caplog.records if "flaky crashed" in r.getMessage()]
    assert len(crashes) == 3
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in crashes)


async def test_the_poller_keeps_polling_after_it_crashed(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNeuron("n1")
    async with cortex(fake, poll={"interval": 0.05}) as c:
        poller = c.gateway.poller
        poll_once = poller.poll_once
        crashed = asyncio.Event()

        async def crashes_once() -> None:
            if not crashed.is_set():
                crashed.set()
                raise RuntimeError("a bug in the poller")
            await poll_once()

        with caplog.at_level(logging.ERROR, "cortex.supervisor"):
            poller.poll_once = crashes_once  # type: ignore[method-assign]
            await asyncio.wait_for(crashed.wait(), 2)
            fake.models["m2"] = "ready"  # only a poll after the crash can see this
            node = c.gateway.fleet.node("n1")
            for _ in range(100):
                if node.status_of("m2") == "ready":
                    break
                await asyncio.sleep(0.05)
        assert node.status_of("m2") == "ready"
        assert any(
            "poller crashed" in r.getMessage() and r.exc_info is not None for r in caplog.records
        )


async def test_a_crashed_pin_load_is_logged_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeNeuron("n1", models={})
    catalogue = ({"id": "p", "pinned_on": ["n1"]},)
    async with cortex(fake, catalogue=catalogue, loading={"pin_retry": 0.1}) as c:
        loader = c.gateway.loader
        for _ in range(100):  # the pin loaded at start; take it away again
            if fake.models.get("p") == "ready":
                break
            await asyncio.sleep(0.02)
        fake.models.clear()
        await c.poll()
        await asyncio.sleep(0.15)  # past pin_retry since the load at start
        ensure = loader.ensure

        async def crashes(model: str, node: str | None = None) -> object:
            raise RuntimeError("a bug in loading")

        with caplog.at_level(logging.ERROR, "cortex.loader"):
            loader.ensure = crashes  # type: ignore[assignment,method-assign]
            await c.housekeeping()
            await asyncio.sleep(0.05)
        crashed = [r for r in caplog.records if "loading pinned p on n1 crashed" in r.getMessage()]
        assert crashed and crashed[0].exc_info is not None
        loader.ensure = ensure  # type: ignore[method-assign]
        await asyncio.sleep(0.15)
        await c.housekeeping()
        for _ in range(100):
            if fake.models.get("p") == "ready":
                break
            await asyncio.sleep(0.02)
        assert fake.models.get("p") == "ready"
