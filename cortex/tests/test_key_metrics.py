"""Requests and tokens are counted per API key, by the key's name (never the key itself)."""

from __future__ import annotations

from cortex_testing import cortex
from fake_neuron import FakeNeuron
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_requests_and_tokens_carry_the_key_name() -> None:
    auth = {
        "api_keys": ["sk-plain-secret"],
        "keys": [{"name": "team-a", "key": "sk-team-a-secret", "role": "user", "models": ["m1"]}],
    }
    async with cortex(FakeNeuron("n1", chunks=3), auth=auth) as c:
        for key in ("sk-team-a-secret", "sk-team-a-secret", "sk-plain-secret"):
            headers = {"authorization": f"Bearer {key}"}
            await c.client.post("/v1/chat/completions", json={"model": "m1"}, headers=headers)
        refused = await c.client.post(
            "/v1/chat/completions",
            json={"model": "m2"},
            headers={"authorization": "Bearer sk-team-a-secret"},
        )
        assert refused.status_code == 403
        text = await c.metrics()
    assert "secret" not in text
    requests = samples(text, "cortex_requests_total")
    chat = ("endpoint", "/v1/chat/completions")
    ok = (chat, ("model", "m1"), ("node", "n1"), ("status", "200"))
    assert requests[tuple(sorted((*ok, ("key", "team-a"))))] == 2
    assert requests[tuple(sorted((*ok, ("key", "api_keys[0]"))))] == 1
    forbidden = (chat, ("key", "team-a"), ("model", "_unknown"), ("node", "none"))
    assert requests[tuple(sorted((*forbidden, ("status", "403"))))] == 1
    completion = samples(text, "cortex_completion_tokens_total")
    assert completion[(("key", "team-a"), ("model", "m1"))] == 6
    assert completion[(("key", "api_keys[0]"), ("model", "m1"))] == 3
    assert samples(text, "cortex_prompt_tokens_total")[(("key", "team-a"), ("model", "m1"))] == 6


async def test_without_keys_the_key_label_is_anonymous() -> None:
    async with cortex(FakeNeuron("n1", chunks=3)) as c:
        await c.client.post("/v1/chat/completions", json={"model": "m1"})
        text = await c.metrics()
    completion = samples(text, "cortex_completion_tokens_total")
    assert completion == {(("key", "_anonymous"), ("model", "m1")): 3}
