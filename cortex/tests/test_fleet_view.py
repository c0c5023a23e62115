"""The poller's view: up/down with hysteresis, the merged /v1/models, /health, cortex status."""

from __future__ import annotations

from cortex_testing import cortex
from fake_neuron import FakeNeuron

from cortex.status import render


async def test_a_neuron_is_down_only_after_several_failures_and_back_on_one_success() -> None:
    fake = FakeNeuron("n1")
    async with cortex(fake) as c:  # down_after = 2
        node = c.gateway.fleet.nodes[0]
        assert node.up
        fake.polls_fail = True
        await c.poll()
        assert node.up and node.failures == 1
        await c.poll()
        assert not node.up
        health = (await c.client.get("/health")).json()
        assert health == {
            "status": "degraded",
            "instance": c.gateway.settings.instance,
            "neurons": {"up": 0, "down": 1, "total": 1},
            "models_ready": 0,
        }
        assert 'cortex_neuron_up{node="n1"} 0.0' in await c.metrics()
        chat = await c.client.post("/v1/chat/completions", json={"model": "m1"})
        assert chat.status_code == 404  # nothing up knows it
        fake.polls_fail = False
        await c.poll()
        assert node.up
        assert (await c.client.get("/health")).json()["status"] == "ok"
        assert 'cortex_neuron_up{node="n1"} 1.0' in await c.metrics()
        fake.models = {}
        await c.poll()
        assert "cortex_model_loaded{" not in await c.metrics()


async def test_a_neuron_down_at_start_is_not_fatal() -> None:
    async with cortex(FakeNeuron("n2"), dead=("n1",)) as c:
        health = (await c.client.get("/health")).json()
        assert health["status"] == "ok"
        assert health["neurons"] == {"up": 1, "down": 1, "total": 2}


async def test_models_merge_the_catalogue_and_every_neuron() -> None:
    n1 = FakeNeuron("n1", models={"m1": "ready", "m2": "loading"})
    n2 = FakeNeuron("n2", models={"m1": "ready"})
    async with cortex(n1, n2, catalogue=("m3",)) as c:
        data = (await c.client.get("/v1/models")).json()
        assert data["object"] == "list"
        by_id = {m["id"]: m for m in data["data"]}
        assert sorted(by_id) == ["m1", "m2", "m3"]
        assert by_id["m1"]["object"] == "model"
        assert by_id["m1"]["locations"] == [
            {"node": "n1", "status": "ready"},
            {"node": "n2", "status": "ready"},
        ]
        assert by_id["m2"]["locations"] == [{"node": "n1", "status": "loading"}]
        assert by_id["m3"]["locations"] == []


async def test_status_prints_the_fleet_as_a_table() -> None:
    gpus = [{"index": 0, "total": 24000, "vram_free_mb": 20000, "vram_used_mb": 4000}]
    async with cortex(FakeNeuron("gpu-1", devices=gpus), dead=("gpu-2",)) as c:
        table = render((await c.client.get("/fleet")).json())
    lines = table.splitlines()
    assert lines[0].split() == [
        "NEURON",
        "STATUS",
        "GPUS",
        "VRAM",
        "USED/TOTAL",
        "IN",
        "FLIGHT",
        "ENDPOINT",
    ]
    assert lines[1].split()[:5] == ["gpu-1", "ready", "1", "4000/24000", "MiB"]
    assert lines[2].split()[:2] == ["gpu-2", "down"]
    assert "m1" in table and "gpu-1 (ready)" in table


async def test_status_shows_awake_asleep_and_stopped_per_neuron() -> None:
    n1 = FakeNeuron("n1", models={"m1": "ready", "m2": "sleeping", "m4": "waking"})
    async with cortex(n1, catalogue=("m3",)) as c:
        fleet = (await c.client.get("/fleet")).json()
        listed = {m["id"]: m for m in (await c.client.get("/v1/models")).json()["data"]}
    lines = render(fleet).splitlines()
    at = lines.index(next(line for line in lines if line.startswith("NEURON  AWAKE")))
    assert lines[at].split() == ["NEURON", "AWAKE", "ASLEEP", "STOPPED"]
    assert lines[at + 1].split() == ["n1", "m1,", "m4", "m2", "1"]
    assert (listed["m1"]["state"], "estimated_ready_s" in listed["m1"]) == ("ready", False)
    assert listed["m2"]["state"] == "sleeping" and listed["m2"]["estimated_ready_s"] == 5.0
    assert listed["m3"]["state"] == "stopped" and listed["m3"]["estimated_ready_s"] == 60.0
    assert listed["m4"]["state"] == "waking" and listed["m4"]["estimated_ready_s"] == 5.0


async def test_routing_follows_each_change_a_poll_brings() -> None:
    """Routing answers from views kept between changes: each poll must show in the next request."""
    fake = FakeNeuron("n1")
    async with cortex(fake) as c:

        async def status() -> int:
            return (await c.client.post("/v1/chat/completions", json={"model": "m1"})).status_code

        assert await status() == 200
        fake.models = {"m1": "loading"}
        await c.poll()
        assert await status() == 503  # known, not ready anywhere
        fake.models = {}
        await c.poll()
        assert await status() == 404  # nobody has it any more
        fake.models = {"m1": "ready"}
        await c.poll()
        assert await status() == 200
        fake.health_status = "draining"
        await c.poll()
        assert await status() == 503
        fake.health_status = "ready"
        await c.poll()
        assert await status() == 200
        fake.polls_fail = True
        await c.poll()
        await c.poll()  # down after two
        assert await status() == 404


async def test_models_this_cortex_never_timed_show_the_neurons_figures() -> None:
    # Another replica woke and loaded these: the neuron's own timings, not the defaults.
    n1 = FakeNeuron("n1", models={"m2": "sleeping", "m4": "waking", "m5": "loading"})
    n1.timings = {"m2": {"last_wake_s": 1.5}, "m4": {"last_wake_s": 2.0}}
    n1.timings["m5"] = {"last_load_s": 42.0}
    async with cortex(n1) as c:
        listed = {m["id"]: m for m in (await c.client.get("/v1/models")).json()["data"]}
    assert listed["m2"]["estimated_ready_s"] == 1.5
    assert listed["m4"]["estimated_ready_s"] == 2.0
    assert listed["m5"]["estimated_ready_s"] == 42.0


async def test_a_load_or_wake_under_way_elsewhere_shows_the_time_it_has_left() -> None:
    # The neuron says how long each has been in its state: a load 30 s into a 42 s estimate
    # has about 12 s left; a sleeper's estimate is its whole wake.
    n1 = FakeNeuron("n1", models={"m2": "sleeping", "m4": "waking", "m5": "loading"})
    n1.timings = {"m2": {"last_wake_s": 1.5}, "m4": {"last_wake_s": 2.0}}
    n1.timings["m5"] = {"last_load_s": 42.0}
    n1.state_s = {"m2": 100.0, "m4": 5.0, "m5": 30.0}
    async with cortex(n1) as c:
        listed = {m["id"]: m for m in (await c.client.get("/v1/models")).json()["data"]}
    assert listed["m2"]["estimated_ready_s"] == 1.5
    assert listed["m4"]["estimated_ready_s"] == 0.0
    assert 11.0 <= listed["m5"]["estimated_ready_s"] <= 12.0
