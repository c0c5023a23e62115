"""Models on demand against fake neurons: cold loads, evictions, pins, idle unload, by hand."""

from __future__ import annotations

import asyncio
import json

import pytest
from cortex_testing import cortex, sse_data, value
from fake_neuron import FakeNeuron

from cortex.cli import main

CHAT = "/v1/chat/completions"


def empty(name: str = "n1", **kw: object) -> FakeNeuron:
    return FakeNeuron(name, models={}, max_loaded_models=1, **kw)  # type: ignore[arg-type]


async def test_a_request_loads_its_model_and_the_next_one_evicts_it() -> None:
    neuron = empty()
    async with cortex(
        neuron, catalogue=({"id": "a", "source": "/m/a", "dtype": "float32"}, "b")
    ) as c:
        first = await c.client.post(CHAT, json={"model": "a"})
        assert first.status_code == 200, first.text
        assert [spec["model_id"] for spec in neuron.loads] == ["a"]
        assert neuron.loads[0] == {
            "model_id": "a",
            "harness": "vllm",
            "tensor_parallel": 1,
            "engine_args": [],
            "source": "/m/a",
            "dtype": "float32",
        }
        assert (await c.client.post(CHAT, json={"model": "a"})).status_code == 200
        assert len(neuron.loads) == 1, "a ready model is not loaded again"

        second = await c.client.post(CHAT, json={"model": "b"})
        assert second.status_code == 200, second.text
        assert neuron.unloads == ["a"]
        assert neuron.models == {"b": "ready"}

        metrics = await c.metrics()
        assert value(metrics, "cortex_cold_starts_total", model="a", node="n1") == 1
        assert value(metrics, "cortex_cold_starts_total", model="b", node="n1") == 1
        assert value(metrics, "cortex_model_load_seconds_count", model="b", node="n1") == 1
        assert value(metrics, "cortex_evictions_total", model="a", node="n1", reason="lru") == 1
        assert value(metrics, "cortex_requests_waiting_for_load", model="b") == 0


async def test_five_concurrent_first_requests_share_one_load() -> None:
    neuron = empty(load_delay=0.5)
    async with cortex(neuron, catalogue=("a",)) as c:
        answers = await asyncio.gather(
            *(c.client.post(CHAT, json={"model": "a"}) for _ in range(5))
        )
        assert [a.status_code for a in answers] == [200] * 5
        assert len(neuron.loads) == 1
        assert value(await c.metrics(), "cortex_cold_starts_total", model="a") == 1


async def test_a_pinned_model_loads_at_start_and_is_never_evicted() -> None:
    neuron = empty()
    catalogue = ({"id": "a", "pinned_on": ["n1"]}, "b")
    async with cortex(neuron, catalogue=catalogue, loading={"check_interval": 0.05}) as c:
        for _ in range(100):
            if neuron.models.get("a") == "ready":
                break
            await asyncio.sleep(0.05)
        assert neuron.models == {"a": "ready"}, "the pin was loaded at start"
        await c.poll()

        refused = await c.client.post(CHAT, json={"model": "b"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        error = refused.json()["error"]
        assert error["code"] == "no_capacity"
        assert error["message"].startswith("no room for b: every neuron that can hold it is full")
        assert neuron.models == {"a": "ready"}
        assert (await c.client.post(CHAT, json={"model": "a"})).status_code == 200


async def test_a_model_serving_a_request_is_not_evicted() -> None:
    neuron = FakeNeuron(
        "n1", models={"a": "ready"}, max_loaded_models=1, chunks=20, chunk_delay=0.05
    )
    async with cortex(neuron, catalogue=("a", "b")) as c:
        await c.poll()
        body = {"model": "a", "stream": True}
        async with c.client.stream("POST", CHAT, json=body) as streaming:
            lines = streaming.aiter_lines()
            await anext(lines)
            refused = await c.client.post(CHAT, json={"model": "b"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "no_capacity"
            rest = [line async for line in lines]
        assert "data: [DONE]" in rest
        assert (await c.client.post(CHAT, json={"model": "b"})).status_code == 200
        assert neuron.unloads == ["a"]


async def test_a_model_busy_for_other_clients_of_the_neuron_is_not_evicted() -> None:
    neuron = FakeNeuron("n1", models={"a": "ready"}, max_loaded_models=1, in_flight={"a": 1})
    async with cortex(neuron, catalogue=("a", "b")) as c:
        await c.poll()
        assert (await c.client.post(CHAT, json={"model": "b"})).status_code == 503
        neuron.in_flight = {}
        await c.poll()
        assert (await c.client.post(CHAT, json={"model": "b"})).status_code == 200


async def test_two_neurons_the_model_goes_where_there_is_room() -> None:
    full = FakeNeuron("n1", models={"a": "ready"}, max_loaded_models=1)
    roomy = empty("n2")
    catalogue = ({"id": "a", "pinned_on": ["n1"]}, "b")
    async with cortex(full, roomy, catalogue=catalogue) as c:
        answer = await c.client.post(CHAT, json={"model": "b"})
        assert answer.status_code == 200
        assert answer.json()["node"] == "n2"
        assert full.unloads == [] and full.loads == []
        assert [s["model_id"] for s in roomy.loads] == ["b"]


async def test_a_streaming_request_gets_keepalives_while_its_model_loads() -> None:
    neuron = empty(load_delay=1.0)
    async with cortex(neuron, catalogue=("a",), loading={"keepalive_interval": 0.2}) as c:
        body = {"model": "a", "stream": True}
        async with c.client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            text = "".join([part async for part in response.aiter_text()])
        comments = [line for line in text.split("\n") if line.startswith(":")]
        assert len(comments) >= 3, text
        assert comments[0] == ": loading a"
        assert text.index(": loading a") < text.index("data: ")
        data = sse_data(text)
        assert data[-1] == "[DONE]"
        assert [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:-1]] == [
            "t0",
            "t1",
            "t2",
            "t3",
        ]


async def test_a_stream_whose_load_fails_gets_one_error_event() -> None:
    neuron = empty(load_status=502, load_delay=0.3)
    async with cortex(neuron, catalogue=("a",), loading={"keepalive_interval": 0.1}) as c:
        body = {"model": "a", "stream": True}
        async with c.client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            text = "".join([part async for part in response.aiter_text()])
        error = json.loads(sse_data(text)[0])["error"]
        assert error["code"] == "load_failed"
        assert error["message"] == "neuron n1 could not load a: fake load of a fails"


async def test_a_failed_load_is_502_with_the_neurons_reason_and_cortex_keeps_serving() -> None:
    neuron = empty(load_status=502)
    neuron.models = {"m1": "ready"}
    neuron.max_loaded_models = None
    async with cortex(neuron, catalogue=("a",)) as c:
        await c.poll()
        failed = await c.client.post(CHAT, json={"model": "a"})
        assert failed.status_code == 502
        assert failed.json()["error"] == {
            "message": "neuron n1 could not load a: fake load of a fails",
            "type": "api_error",
            "param": None,
            "code": "load_failed",
        }
        anthropic = await c.client.post("/v1/messages", json={"model": "a"})
        assert anthropic.status_code == 502
        assert anthropic.json()["error"]["type"] == "api_error"
        assert value(await c.metrics(), "cortex_load_failures_total", model="a") == 2
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_a_model_no_neuron_could_hold_is_404_with_the_reason() -> None:
    catalogue = ({"id": "huge", "min_devices": 2}, {"id": "roomy", "vram_mb": 100})
    async with cortex(FakeNeuron("n1"), catalogue=catalogue) as c:
        await c.poll()
        answer = await c.client.post(CHAT, json={"model": "huge"})
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["code"] == "model_unplaceable"
        assert error["message"] == "no neuron can hold huge (n1: needs 2 GPU(s), has 0)"
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_a_model_that_may_fit_on_a_neuron_that_is_down_is_503() -> None:
    catalogue = ({"id": "huge", "min_devices": 2},)
    async with cortex(FakeNeuron("n1"), dead=("n2",), catalogue=catalogue) as c:
        answer = await c.client.post(CHAT, json={"model": "huge"})
        assert answer.status_code == 503
        assert "neurons not available now: n2" in answer.json()["error"]["message"]


async def test_a_slow_cold_start_is_503_for_a_waiting_request_and_the_load_goes_on() -> None:
    neuron = empty(load_delay=1.0)
    loading = {"cold_start_timeout": 0.2, "cold_estimate": 3.0}
    async with cortex(neuron, catalogue=("a",), loading=loading) as c:
        waited = await c.client.post(CHAT, json={"model": "a"})
        assert waited.status_code == 503
        # What is left of the expected cold load (3 s, nothing measured yet), rounded up.
        assert waited.headers["retry-after"] == "3"
        assert waited.json()["error"]["code"] == "model_loading"
        for _ in range(50):
            if neuron.models.get("a") == "ready":
                break
            await asyncio.sleep(0.05)
        assert (await c.client.post(CHAT, json={"model": "a"})).status_code == 200
        assert len(neuron.loads) == 1


async def test_an_idle_model_is_unloaded_after_its_ttl_but_a_pinned_one_stays() -> None:
    # "a" starts unloaded: were it ready at start, its idle clock would start at the
    # lifespan's own first housekeeping, and a machine slow enough to spend the TTL before the
    # test's first step would unload it early, cold-load it for the chat and unload it twice.
    neuron = FakeNeuron("n1", models={"p": "ready", "other": "ready"})
    catalogue = ({"id": "a", "idle_ttl": 0.5}, {"id": "p", "pinned_on": ["n1"]})
    async with cortex(neuron, catalogue=catalogue, loading={"idle_ttl": 0.5}) as c:
        await c.poll()
        assert (await c.client.post(CHAT, json={"model": "a"})).status_code == 200
        assert [load["model_id"] for load in neuron.loads] == ["a"]
        await c.housekeeping()
        assert "a" in neuron.models, "used just now"
        await asyncio.sleep(0.6)
        await c.housekeeping()
        assert neuron.unloads == ["a"], "pinned and uncatalogued models stay"
        metrics = await c.metrics()
        assert value(metrics, "cortex_evictions_total", model="a", reason="idle") == 1


async def test_load_and_unload_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    neuron = FakeNeuron("n1", models={}, max_loaded_models=2)
    other = FakeNeuron("n2", models={})
    keys = {"keys": [{"name": "ops", "key": "k", "role": "admin"}]}
    async with cortex(neuron, other, catalogue=("a", "b"), auth=keys) as c:
        headers = {"Authorization": "Bearer k"}
        await c.poll()
        refused = await c.client.post("/admin/models/load", json={"model": "a"})
        assert refused.status_code == 401

        loaded = await c.client.post(
            "/admin/models/load", json={"model": "a", "node": "n2"}, headers=headers
        )
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["node"] == "n2"
        assert other.models == {"a": "ready"}

        endpoint = str(c.client.base_url)
        args = ["--endpoint", endpoint, "--admin-key", "k"]
        code = await asyncio.to_thread(main, ["load", "b", "--node", "n1", *args])
        assert code == 0
        assert capsys.readouterr().out.startswith("b ready on n1 (")
        code = await asyncio.to_thread(main, ["unload", "a", *args])
        assert code == 0
        assert capsys.readouterr().out == "a unloaded from n2\n"
        assert other.models == {}
        code = await asyncio.to_thread(main, ["unload", "a", *args])
        assert code == 1
        assert capsys.readouterr().err == (
            "cortex unload: HTTP 404: model 'a' is not loaded on any neuron\n"
        )
        code = await asyncio.to_thread(main, ["load", "zzz", *args])
        assert code == 1
        assert "HTTP 404: model 'zzz' is not in the catalogue" in capsys.readouterr().err
        code = await asyncio.to_thread(main, ["load", "a", "--node", "n9", *args])
        assert code == 1
        assert "no neuron named 'n9' (configured: n1, n2)" in capsys.readouterr().err

        bad = await c.client.post("/admin/models/unload", json={"node": 3}, headers=headers)
        assert bad.status_code == 400
        assert bad.json()["error"]["message"] == (
            "'model' is required and must be a non-empty string"
        )
        metrics = await c.metrics()
        assert value(metrics, "cortex_evictions_total", model="a", reason="manual") == 1
        assert value(metrics, "cortex_cold_starts_total", model="b", node="n1") == 1


async def test_a_pin_unloaded_by_hand_is_not_loaded_back() -> None:
    neuron = FakeNeuron("n1", models={"p": "ready"})
    async with cortex(neuron, catalogue=({"id": "p", "pinned_on": ["n1"]},)) as c:
        await c.poll()
        unloaded = await c.client.post("/admin/models/unload", json={"model": "p"})
        assert unloaded.status_code == 200
        assert unloaded.json() == {"status": "unloaded", "model": "p", "nodes": ["n1"]}
        await c.poll()
        await c.housekeeping()
        await asyncio.sleep(0.1)
        assert neuron.loads == []
        loaded = await c.client.post("/admin/models/load", json={"model": "p"})
        assert loaded.status_code == 200
        assert [s["model_id"] for s in neuron.loads] == ["p"]


async def test_a_client_that_leaves_during_the_load_stops_waiting_and_the_load_goes_on() -> None:
    neuron = empty(load_delay=0.6)
    async with cortex(neuron, catalogue=("a",), loading={"keepalive_interval": 0.1}) as c:
        async with c.client.stream("POST", CHAT, json={"model": "a", "stream": True}) as response:
            lines = response.aiter_lines()
            assert await anext(lines) == ": loading a"
            waiting = value(await c.metrics(), "cortex_requests_waiting_for_load", model="a")
            assert waiting == 1
        # Generous limits: the load takes 0.6 s, but a CI machine busy with vLLM may be slow.
        for _ in range(200):
            waiting = value(await c.metrics(), "cortex_requests_waiting_for_load", model="a")
            if neuron.models.get("a") == "ready" and waiting == 0:
                break
            await asyncio.sleep(0.05)
        assert neuron.models == {"a": "ready"}
        assert waiting == 0
        assert (await c.client.post(CHAT, json={"model": "a"})).status_code == 200


async def test_a_poll_sent_before_an_eviction_does_not_bring_the_evicted_model_back() -> None:
    neuron = FakeNeuron("n1", models={"a": "ready"}, max_loaded_models=1, poll_delay=0.5)
    async with cortex(neuron, catalogue=("a", "b")) as c:
        await c.poll()
        stale = asyncio.create_task(c.poll())  # the neuron lists {a} now, answers later
        await asyncio.sleep(0.1)
        assert (await c.client.post(CHAT, json={"model": "b"})).status_code == 200
        await stale
        assert set(c.gateway.fleet.node("n1").models) == {"b"}
        assert (await c.client.post(CHAT, json={"model": "b"})).status_code == 200
        assert [s["model_id"] for s in neuron.loads] == ["b"]


async def test_our_own_requests_in_the_neurons_count_do_not_outlive_them() -> None:
    """The neuron's ``in_flight`` counts cortex's requests too, and is as old as the last poll.

    A poll taken while cortex's own stream ran must not keep the model "busy" once the stream
    has ended: the next cold load evicts it without waiting for another poll.
    """
    neuron = FakeNeuron(
        "n1", models={"a": "ready"}, max_loaded_models=1, chunks=10, chunk_delay=0.05
    )
    async with cortex(neuron, catalogue=("a", "b")) as c:
        async with c.client.stream("POST", CHAT, json={"model": "a", "stream": True}) as s:
            lines = s.aiter_lines()
            await anext(lines)
            neuron.in_flight = {"a": 1}  # what a real neuron reports now: cortex's stream
            await c.poll()
            assert c.gateway.fleet.nodes[0].others == {}
            rest = [line async for line in lines]
        assert "data: [DONE]" in rest
        # The cold load re-reads the neuron first; a real one counts the ended stream out.
        neuron.in_flight = {}
        answer = await c.client.post(CHAT, json={"model": "b"})  # no poll in between
        assert answer.status_code == 200, answer.text
        assert neuron.unloads == ["a"]
