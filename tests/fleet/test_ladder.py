"""The residency ladder through cortex: a neuron with room for one awake model, stand-in
engines with a slow cold start and a quick wake."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from neuron_testing import alive, fake_harness, running, settings_for, wait_gone
from replica_support import fleet, sample, start_replica, starts, stop, stops, wait_for

from neuron.settings import Harnesses

COLD, WAKE = 3.0, 0.3


async def test_a_b_a_wakes_the_sleeper_instead_of_a_cold_start(tmp_path: Path) -> None:
    async with fleet(
        tmp_path, replicas=1, neurons=1, startup_delay=COLD, sleep=True, wake_delay=WAKE
    ) as f:
        neuron = f.neurons[0]
        assert (await f.chat(0, "m1")).status_code == 200
        assert (await f.chat(0, "m2")).status_code == 200
        assert f.truth() == {"n1": {"m1": "sleeping", "m2": "ready"}}
        await f.settled()
        listed = (await f.client.get(f"{f.replicas[0].url}/v1/models")).json()["data"]
        m1 = next(m for m in listed if m["id"] == "m1")
        assert m1["state"] == "sleeping" and m1["estimated_ready_s"] > 0
        m3 = next(m for m in listed if m["id"] == "m3")
        assert m3["state"] == "stopped" and m3["estimated_ready_s"] == 60.0

        began = time.monotonic()
        assert (await f.chat(0, "m1")).status_code == 200
        took = time.monotonic() - began
        assert took < COLD, f"a wake took {took:.1f}s (a cold start is {COLD}s)"
        assert f.truth() == {"n1": {"m1": "ready", "m2": "sleeping"}}
        assert starts([neuron], "m1") + starts([neuron], "m2") == 2
        assert stops([neuron]) == 0

        # Ten concurrent requests for the sleeper: one wake.
        answers = await asyncio.gather(*(f.chat(0, "m2") for _ in range(10)))
        assert [a.status_code for a in answers] == [200] * 10
        assert sample(neuron, "neuron_model_wakes_total", model="m2", outcome="ok") == 1.0
        assert starts([neuron], "m2") == 1

        replica = f.replicas[0]
        metrics = (await f.client.get(f"http://127.0.0.1:{replica.metrics_port}/metrics")).text
        assert 'cortex_wakes_total{model="m1",node="n1"} 1.0' in metrics
        assert 'cortex_model_ready_seconds_count{kind="wake",model="m1"} 1.0' in metrics
        assert "woke m1 on n1" in replica.log()

        # The measured wake now drives the estimate.
        await f.settled()
        listed = (await f.client.get(f"{f.replicas[0].url}/v1/models")).json()["data"]
        m1 = next(m for m in listed if m["id"] == "m1")
        assert m1["state"] == "sleeping" and m1["estimated_ready_s"] < COLD


async def test_a_neuron_restarted_while_models_sleep_loads_them_afresh(tmp_path: Path) -> None:
    harness = fake_harness(FAKE_ENGINE_STARTUP_DELAY="0.2")
    settings = settings_for(harness=Harnesses(vllm=harness), max_loaded_models=1)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    booted, closed = running(settings), False
    first = await booted.__aenter__()
    try:
        replica = start_replica(tmp_path, "cortex-a", [("n1", first.url)], ["m1", "m2"])
    except BaseException:
        await booted.__aexit__(None, None, None)
        raise
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            chat = f"{replica.url}/v1/chat/completions"

            async def up() -> bool:
                health = (await client.get(f"{replica.url}/health")).json()
                return bool(health["neurons"]["up"] == 1)

            await wait_for("cortex up", up)
            for model in ("m1", "m2"):
                answer = await client.post(chat, json={"model": model, **body})
                assert answer.status_code == 200, answer.text
            slots = first.neuron.registry.slots()
            assert {s.model_id: str(s.state) for s in slots} == {"m1": "sleeping", "m2": "ready"}
            pids = [s.engine.pid for s in slots]
            # The neuron goes away (its drain stops the sleeper too) and comes back empty.
            closed = True
            await booted.__aexit__(None, None, None)
            for pid in pids:
                assert pid is not None and await wait_gone(pid, timeout=10)
            async with running(settings) as second:

                async def empty() -> bool:
                    listed = (await client.get(f"{replica.url}/v1/models")).json()["data"]
                    return all(m["state"] == "stopped" for m in listed)

                await wait_for("cortex to see the restarted neuron empty", empty)
                answer = await client.post(chat, json={"model": "m1", **body})
                assert answer.status_code == 200, answer.text
                assert {s.model_id for s in second.neuron.registry.slots()} == {"m1"}
        assert replica.errors() == [], replica.log()
    finally:
        stop(replica.proc)
        if not closed:
            await booted.__aexit__(None, None, None)


async def test_a_burst_for_a_sleeper_through_three_replicas_wakes_it_once(tmp_path: Path) -> None:
    async with fleet(tmp_path, replicas=3, neurons=1, sleep=True, wake_delay=0.3) as f:
        neuron = f.neurons[0]
        for trial in range(5):
            asleep, awake = ("m1", "m2") if trial % 2 else ("m2", "m1")
            assert (await f.chat(trial % 3, asleep)).status_code == 200
            assert (await f.chat((trial + 1) % 3, awake)).status_code == 200
            await f.settled()
            assert f.truth() == {"n1": {asleep: "sleeping", awake: "ready"}}
            wakes = sample(neuron, "neuron_model_wakes_total", model=asleep, outcome="ok")
            began = starts([neuron], "m1") + starts([neuron], "m2")
            answers = await asyncio.gather(*(f.chat(i % 3, asleep) for i in range(30)))
            assert [a.status_code for a in answers] == [200] * 30, f"trial {trial}"
            after = sample(neuron, "neuron_model_wakes_total", model=asleep, outcome="ok")
            assert after - wakes == 1, f"trial {trial}: {f.truth()}"
            assert starts([neuron], "m1") + starts([neuron], "m2") == began
            assert f.truth() == {"n1": {asleep: "ready", awake: "sleeping"}}
        assert stops([neuron]) == 0


async def test_idle_ttl_puts_a_model_to_sleep_and_sleep_ttl_stops_it(tmp_path: Path) -> None:
    loading = {"idle_ttl": 1.0, "sleep_ttl": 1.5, "check_interval": 0.2}
    async with fleet(
        tmp_path, replicas=2, neurons=1, sleep=True, loading=loading, interval=0.5
    ) as f:
        await f.load(0, "m1")
        pid = f.neurons[0].neuron.registry.slots()[0].engine.pid
        assert pid is not None

        async def asleep() -> bool:
            return f.truth() == {"n1": {"m1": "sleeping"}}

        await wait_for("the idle model asleep", asleep, 10)
        assert alive(pid)

        async def counted() -> bool:
            # The model reads "sleeping" from the moment its sleep begins; the sleep is
            # counted when the engine has slept (on a slow machine, a little later).
            return sample(f.neurons[0], "neuron_model_sleeps_total", model="m1", outcome="ok") == 1

        await wait_for("its sleep counted", counted, 10)

        async def gone() -> bool:
            return f.truth() == {"n1": {}}

        await wait_for("the sleeper stopped after sleep_ttl", gone, 10)
        assert await wait_gone(pid, timeout=10)
