"""Load → ready → inference → unload → the engine process group is gone."""

from __future__ import annotations

from neuron_testing import Running, alive, wait_gone


async def test_load_serves_and_unload_stops_the_engine(neuron: Running) -> None:
    response = await neuron.load("m1", source="src/m1", dtype="float32", max_model_len=256)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "loaded"
    assert body["model"]["id"] == "m1"
    assert body["model"]["status"] == "ready"
    pid = body["model"]["engine"]["pid"]
    assert alive(pid)

    models = await neuron.models()
    assert models["m1"]["status"] == "ready"
    listed = (await neuron.client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["m1"]
    endpoint = await neuron.client.get("/models/m1/endpoint")
    assert endpoint.json() == {"url": neuron.url}

    chat = await neuron.client.post(
        "/v1/chat/completions",
        json={"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "fake reply 0"

    response = await neuron.client.post("/models/unload", json={"model_id": "m1"})
    assert response.json()["status"] == "unloaded"
    assert await wait_gone(pid, timeout=1.0)
    assert await neuron.models() == {}


async def test_load_of_a_ready_model_returns_the_same_engine(neuron: Running) -> None:
    first = (await neuron.load("m1")).json()["model"]["engine"]["pid"]
    again = await neuron.load("m1")
    assert again.status_code == 200
    assert again.json()["model"]["engine"]["pid"] == first


async def test_unload_of_an_unknown_model_is_404(neuron: Running) -> None:
    response = await neuron.client.post("/models/unload", json={"model_id": "nope"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_model_ids_may_contain_slashes(neuron: Running) -> None:
    assert (await neuron.load("Qwen/Qwen3-8B")).status_code == 200
    endpoint = await neuron.client.get("/models/Qwen/Qwen3-8B/endpoint")
    assert endpoint.status_code == 200
    chat = await neuron.client.post("/v1/chat/completions", json={"model": "Qwen/Qwen3-8B"})
    assert chat.status_code == 200
