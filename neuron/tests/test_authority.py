"""The neuron is the authority over its models: epochs, fenced commands, in-flight refusal.

Several cortex replicas send commands decided from what they last read; the neuron refuses
one decided from a state that has moved on, and never stops a model that is serving.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from neuron_testing import Running, fake_harness, running, settings_for

CHAT = "/v1/chat/completions"


def chat(model: str, sleep: float = 0.0) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "fake_sleep": sleep}


async def epoch(neuron: Running) -> int:
    return int((await neuron.client.get("/health")).json()["epoch"])


async def test_every_state_change_bumps_the_epoch_and_every_answer_names_it() -> None:
    async with running(settings_for()) as neuron:
        health = (await neuron.client.get("/health")).json()
        instance, first = health["instance"], health["epoch"]
        assert len(instance) == 32
        listed = await neuron.client.get("/models")
        assert listed.headers["x-neuron-epoch"] == str(first)
        assert listed.headers["x-neuron-instance"] == instance

        loaded = await neuron.load("m1")
        assert loaded.status_code == 200
        state = loaded.json()["state"]
        assert state["instance"] == instance
        assert state["epoch"] == first + 2, "placed, then ready"
        assert [m["id"] for m in state["models"]] == ["m1"]
        assert loaded.json()["started"] is True and loaded.json()["evicted"] == []

        again = await neuron.load("m1", epoch=0)  # already ready: answered, whatever the epoch
        assert again.status_code == 200
        assert again.json()["started"] is False
        assert await epoch(neuron) == first + 2, "a load that changes nothing is no change"

        unloaded = await neuron.client.post("/models/unload", json={"model_id": "m1"})
        assert unloaded.json()["state"]["epoch"] == first + 4, "unloading, then gone"
        assert unloaded.json()["state"]["models"] == []


async def test_a_command_decided_from_an_older_state_is_refused_with_the_current_one() -> None:
    async with running(settings_for()) as neuron:
        seen = await epoch(neuron)
        assert (await neuron.load("m1")).status_code == 200  # another replica, meanwhile

        stale = await neuron.load("m2", epoch=seen)
        assert stale.status_code == 409
        body = stale.json()
        assert body["error"]["code"] == "stale_epoch"
        assert body["error"]["type"] == "conflict_error"
        assert body["state"]["epoch"] == seen + 2
        assert [m["id"] for m in body["state"]["models"]] == ["m1"]
        assert "m2" not in await neuron.models(), "nothing started"

        unload = await neuron.client.post("/models/unload", json={"model_id": "m1", "epoch": seen})
        assert unload.status_code == 409
        assert unload.json()["error"]["code"] == "stale_epoch"
        assert (await neuron.models())["m1"]["status"] == "ready"

        fresh = await neuron.load("m2", epoch=body["state"]["epoch"])
        assert fresh.status_code == 200


async def test_a_load_with_evict_makes_room_and_loads_in_one_step() -> None:
    settings = settings_for(
        max_loaded_models=1,
        harness={"vllm": fake_harness(FAKE_ENGINE_STARTUP_DELAY="0.5")},
        # Stop-only: with the residency ladder on, "old" sleeps instead of going (that case:
        # test_sleep_wake.py::test_room_is_made_by_sleeping_and_a_request_swaps_back).
        sleep={"enabled": False},
    )
    async with running(settings) as neuron:
        assert (await neuron.load("old")).status_code == 200
        seen = await epoch(neuron)
        full = await neuron.load("new", epoch=seen)
        assert full.status_code == 409
        assert full.json()["error"]["code"] == "does_not_fit"

        loading = asyncio.create_task(neuron.load("new", epoch=seen, evict=["old"]))
        for _ in range(100):
            models = await neuron.models()
            if "new" in models:
                break
            await asyncio.sleep(0.01)
        # The new model is visible as loading while the old one goes: others join it.
        assert models["new"]["status"] == "loading"
        joined = await neuron.load("new", epoch=seen, evict=["old"])
        assert joined.status_code == 200 and joined.json()["started"] is False
        answer = await loading
        assert answer.status_code == 200, answer.text
        assert answer.json()["started"] is True
        assert answer.json()["evicted"] == ["old"]
        assert set(await neuron.models()) == {"new"}
        assert neuron.neuron.metrics.engine_exits.labels("old", "stopped")._value.get() == 1


async def test_a_model_serving_requests_is_never_evicted_or_unloaded_unforced() -> None:
    settings = settings_for(max_loaded_models=1)
    async with running(settings) as neuron:
        assert (await neuron.load("busy")).status_code == 200
        held = asyncio.create_task(neuron.client.post(CHAT, json=chat("busy", 1.0)))
        for _ in range(100):
            if (await neuron.models())["busy"]["in_flight"]:
                break
            await asyncio.sleep(0.01)
        info = (await neuron.models())["busy"]
        assert info["in_flight"] == 1 and info["idle_s"] == 0

        evict = await neuron.load("other", evict=["busy"])
        assert evict.status_code == 409
        assert evict.json()["error"]["code"] == "model_busy"
        assert evict.json()["state"]["models"][0]["in_flight"] == 1
        unload = await neuron.client.post("/models/unload", json={"model_id": "busy"})
        assert unload.status_code == 409
        assert unload.json()["error"]["code"] == "model_busy"

        # force: out of routing at once, stopped once the request is done.
        began = time.monotonic()
        forced = await neuron.client.post(
            "/models/unload", json={"model_id": "busy", "force": True}
        )
        assert forced.status_code == 200
        assert (await held).status_code == 200, "the request in flight was not cut"
        assert time.monotonic() - began >= 0.5
        assert await neuron.models() == {}


async def test_last_use_and_idleness_come_from_the_neuron() -> None:
    async with running(settings_for()) as neuron:
        assert (await neuron.load("m1")).status_code == 200
        info = (await neuron.models())["m1"]
        assert info["last_used"] is None
        assert info["idle_s"] is not None and info["idle_s"] >= 0  # idle since ready
        before = time.time()
        assert (await neuron.client.post(CHAT, json=chat("m1"))).status_code == 200
        info = (await neuron.models())["m1"]
        assert before - 1 <= info["last_used"] <= time.time()
        assert 0 <= info["idle_s"] < 1

        await asyncio.sleep(0.3)
        refused = await neuron.client.post(
            "/models/unload", json={"model_id": "m1", "idle_at_least": 60}
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "model_busy"
        idle = await neuron.client.post(
            "/models/unload", json={"model_id": "m1", "idle_at_least": 0.2}
        )
        assert idle.status_code == 200


async def test_the_watch_answers_when_the_state_changes_or_its_time_is_up() -> None:
    settings = settings_for(harness={"vllm": fake_harness(FAKE_ENGINE_STARTUP_DELAY="0.3")})
    async with running(settings) as neuron:
        health = (await neuron.client.get("/health")).json()
        now, instance = health["epoch"], health["instance"]

        other = await neuron.client.get("/models/watch", params={"epoch": now + 5})
        assert other.json()["epoch"] == now, "a different epoch is answered at once"
        reboot = await neuron.client.get(
            "/models/watch", params={"epoch": now, "instance": "old-boot", "timeout": 10}
        )
        assert reboot.json()["instance"] == instance

        began = time.monotonic()
        quiet = await neuron.client.get("/models/watch", params={"epoch": now, "timeout": 0.3})
        assert 0.25 <= time.monotonic() - began < 2
        assert quiet.json() == {"instance": instance, "epoch": now, "status": "ready", "models": []}

        waiting = asyncio.create_task(
            neuron.client.get("/models/watch", params={"epoch": now, "timeout": 20})
        )
        await asyncio.sleep(0.1)
        assert not waiting.done()
        loading = asyncio.create_task(neuron.load("m1"))
        answer = await asyncio.wait_for(waiting, 5)
        assert answer.json()["epoch"] == now + 1
        assert answer.json()["models"][0]["status"] == "loading"
        assert (await loading).status_code == 200


async def test_bad_authority_input_is_a_clear_400() -> None:
    async with running(settings_for()) as neuron:
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/models/load", {"model_id": "m", "epoch": "3"}),
            ("POST", "/models/load", {"model_id": "m", "epoch": -1}),
            ("POST", "/models/load", {"model_id": "m", "epoch": True}),
            ("POST", "/models/load", {"model_id": "m", "evict": "old"}),
            ("POST", "/models/load", {"model_id": "m", "evict": [""]}),
            ("POST", "/models/load", {"model_id": "m", "evict": ["x"] * 65}),
            ("POST", "/models/unload", {"model_id": "m", "force": "yes"}),
            ("POST", "/models/unload", {"model_id": "m", "idle_at_least": -1}),
            ("POST", "/models/unload", {"model_id": "m", "epoch": 1.5}),
        ]
        for method, path, body in cases:
            answer = await neuron.client.request(method, path, json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
        for query in ({"epoch": "x"}, {"epoch": "1", "timeout": "nan"}, {"timeout": "-1"}):
            answer = await neuron.client.get("/models/watch", params=query)
            assert answer.status_code == 400, (query, answer.text)
        assert (await neuron.client.get("/health")).status_code == 200


async def test_a_command_decided_on_another_boot_is_refused_whatever_its_epoch() -> None:
    # An epoch counts from 0 at every boot: the same number from before a restart must not
    # pass. A command that names the boot it was decided on (``instance``) is fenced by it.
    async with running(settings_for()) as neuron:
        health = (await neuron.client.get("/health")).json()
        here, now = health["instance"], health["epoch"]
        other = "f" * 32

        stale = await neuron.load("m1", epoch=now, instance=other)
        assert stale.status_code == 409
        body = stale.json()
        assert body["error"]["code"] == "stale_epoch"
        assert "restarted" in body["error"]["message"]
        assert (body["state"]["instance"], body["state"]["epoch"]) == (here, now)
        assert "m1" not in await neuron.models(), "nothing started"

        fresh = await neuron.load("m1", epoch=now, instance=here)
        assert fresh.status_code == 200, fresh.text
        seen = fresh.json()["state"]["epoch"]
        again = await neuron.load("m1", epoch=seen, instance=other)  # ready: answered as is
        assert again.status_code == 200 and again.json()["started"] is False

        # Without an epoch too: an idle sleep or unload judged on another boot.
        for path in ("/models/sleep", "/models/unload"):
            answer = await neuron.client.post(path, json={"model_id": "m1", "instance": other})
            assert answer.status_code == 409, (path, answer.text)
            assert answer.json()["error"]["code"] == "stale_epoch"
        assert (await neuron.models())["m1"]["status"] == "ready"
        slept = await neuron.client.post(
            "/models/sleep", json={"model_id": "m1", "epoch": seen, "instance": here}
        )
        assert slept.status_code == 200, slept.text
        woken = await neuron.client.post(
            "/models/wake", json={"model_id": "m1", "instance": other, "epoch": seen + 2}
        )
        assert woken.status_code == 409 and woken.json()["error"]["code"] == "stale_epoch"
        assert (await neuron.models())["m1"]["status"] == "sleeping"
        # No instance: not checked (what a cortex older than this field sends).
        unload = await neuron.client.post("/models/unload", json={"model_id": "m1"})
        assert unload.status_code == 200, unload.text


async def test_a_bad_instance_is_a_clear_400() -> None:
    async with running(settings_for()) as neuron:
        for bad in ("", "x" * 65, 5, ["a"]):
            for path in ("/models/load", "/models/unload", "/models/sleep", "/models/wake"):
                body = {"model_id": "m", "instance": bad}
                answer = await neuron.client.post(path, json=body)
                assert answer.status_code == 400, (path, bad, answer.text)
                assert answer.json()["error"]["param"] == "instance"
