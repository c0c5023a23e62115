"""A key with ``models = [...]`` may use those models only: others get 403 in the path's envelope."""

from __future__ import annotations

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

KEYS = {"keys": [{"name": "team-a", "key": "sk-a", "models": ["m1"]}]}
A = {"authorization": "Bearer sk-a"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_outside_the_keys_list_is_403(stream: bool) -> None:
    neuron = FakeNeuron("n1", models={"m1": "ready", "m2": "ready"})
    async with cortex(neuron, catalogue=("m3",), auth=KEYS) as c:
        await c.poll()
        for model in ("m2", "m3", "nowhere"):  # loaded, catalogued (not loaded), unknown
            body = {"model": model, "stream": stream}
            openai = await c.client.post("/v1/chat/completions", json=body, headers=A)
            assert openai.status_code == 403, model
            assert openai.json() == {
                "error": {
                    "message": f"the API key 'team-a' may not use model {model!r}",
                    "type": "permission_error",
                    "param": "model",
                    "code": "model_not_allowed",
                }
            }
            anthropic = await c.client.post(
                "/v1/messages", json=body, headers={"x-api-key": "sk-a"}
            )
            assert anthropic.status_code == 403
            assert anthropic.json() == {
                "type": "error",
                "error": {
                    "type": "permission_error",
                    "message": f"the API key 'team-a' may not use model {model!r}",
                },
            }
        assert neuron.seen == [] and neuron.loads == [], "nothing reached a neuron"
        ok = await c.client.post("/v1/chat/completions", json={"model": "m1"}, headers=A)
        assert ok.status_code == 200


async def test_v1_models_lists_only_the_keys_models() -> None:
    neuron = FakeNeuron("n1", models={"m1": "ready", "m2": "ready"})
    async with cortex(neuron, auth=KEYS) as c:
        await c.poll()
        listed = await c.client.get("/v1/models", headers=A)
        assert [m["id"] for m in listed.json()["data"]] == ["m1"]
