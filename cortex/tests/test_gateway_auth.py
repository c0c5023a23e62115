"""With [auth] api_keys, OpenAI (Bearer) and Anthropic (x-api-key) clients must present one."""

from __future__ import annotations

from cortex_testing import cortex
from fake_neuron import FakeNeuron


async def test_keys_are_required_and_checked() -> None:
    async with cortex(FakeNeuron("n1"), auth={"api_keys": ["k1", "k2"]}) as c:
        assert (await c.client.get("/health")).status_code == 200
        missing = await c.client.post("/v1/chat/completions", json={"model": "m1"})
        assert missing.status_code == 401
        assert missing.json()["error"]["message"].startswith("missing API key")
        wrong = await c.client.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        anthropic = await c.client.post(
            "/v1/messages", json={"model": "m1"}, headers={"x-api-key": "nope"}
        )
        assert anthropic.status_code == 401
        assert anthropic.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid API key"},
        }

        ok = await c.client.post(
            "/v1/chat/completions", json={"model": "m1"}, headers={"authorization": "Bearer k2"}
        )
        assert ok.status_code == 200
        ok = await c.client.post("/v1/messages", json={"model": "m1"}, headers={"x-api-key": "k1"})
        assert ok.status_code == 200
        assert "k1" not in await c.metrics() and "k2" not in await c.metrics()
