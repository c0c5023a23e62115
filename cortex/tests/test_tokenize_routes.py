"""cortex routes every inference path the neuron serves, ``/tokenize`` and ``/detokenize``
included, with a key's model allow-list like the other inference routes (that the two path
lists agree: tests/contract)."""

from __future__ import annotations

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

KEYS = {"keys": [{"name": "team-a", "key": "sk-a", "models": ["m1"]}]}
A = {"authorization": "Bearer sk-a"}


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
async def test_tokenize_routes_to_the_models_neuron_within_the_keys_models(path: str) -> None:
    neuron = FakeNeuron("n1", models={"m1": "ready", "m2": "ready"})
    async with cortex(neuron, auth=KEYS) as c:
        await c.poll()
        refused = await c.client.post(path, json={"model": "m2", "prompt": "hi"}, headers=A)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_allowed"
        assert neuron.seen == []
        ok = await c.client.post(path, json={"model": "m1", "prompt": "hi"}, headers=A)
        assert ok.status_code == 200, ok.text
        assert [(s["path"], s["body"]["model"]) for s in neuron.seen] == [(path, "m1")]
        anonymous = await c.client.post(path, json={"model": "m1"})
        assert anonymous.status_code == 401
