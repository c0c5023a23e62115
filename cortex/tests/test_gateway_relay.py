"""Requests are relayed to a neuron serving the model; answers come back unchanged."""

from __future__ import annotations

import json

from cortex_testing import cortex, sse_data
from fake_neuron import FakeNeuron

CHAT = "/v1/chat/completions"


async def test_non_streaming_answer_is_relayed() -> None:
    async with cortex(FakeNeuron("n1")) as c:
        response = await c.client.post(CHAT, json={"model": "m1", "messages": []})
        assert response.status_code == 200
        assert response.json()["node"] == "n1"
        seen = c.neurons["n1"].seen[0]
        assert seen["body"] == {"model": "m1", "messages": []}


async def test_stream_is_relayed_event_by_event_and_usage_kept_when_asked() -> None:
    async with cortex(FakeNeuron("n1", chunks=3)) as c:
        body = {"model": "m1", "stream": True, "stream_options": {"include_usage": True}}
        response = await c.client.post(CHAT, json=body)
        assert response.headers["content-type"].startswith("text/event-stream")
        data = sse_data(response.text)
        assert [json.loads(d)["choices"] for d in data[:3]] == [
            [{"delta": {"content": f"t{i}"}}] for i in range(3)
        ]
        assert json.loads(data[3])["usage"] == {"prompt_tokens": 3, "completion_tokens": 3}
        assert data[4] == "[DONE]"
        assert c.neurons["n1"].seen[0]["body"] == body  # forwarded as sent


async def test_usage_is_asked_for_upstream_and_dropped_when_the_client_did_not() -> None:
    async with cortex(FakeNeuron("n1", chunks=3)) as c:
        response = await c.client.post(CHAT, json={"model": "m1", "stream": True})
        data = sse_data(response.text)
        assert len(data) == 4 and data[-1] == "[DONE]"
        assert all("usage" not in d for d in data)
        upstream = c.neurons["n1"].seen[0]["body"]
        assert upstream["stream_options"] == {"include_usage": True}
        metrics = await c.metrics()
        assert 'cortex_completion_tokens_total{key="_anonymous",model="m1"} 3.0' in metrics
        assert 'cortex_prompt_tokens_total{key="_anonymous",model="m1"} 3.0' in metrics


async def test_anthropic_stream_is_relayed_with_its_events() -> None:
    async with cortex(FakeNeuron("n1", chunks=2)) as c:
        response = await c.client.post("/v1/messages", json={"model": "m1", "stream": True})
        events = [line for line in response.text.split("\n") if line.startswith("event: ")]
        assert events == [
            "event: message_start",
            "event: content_block_delta",
            "event: content_block_delta",
            "event: message_delta",
            "event: message_stop",
        ]
        assert "stream_options" not in c.neurons["n1"].seen[0]["body"]
        metrics = await c.metrics()
        assert 'cortex_prompt_tokens_total{key="_anonymous",model="m1"} 3.0' in metrics
        assert 'cortex_completion_tokens_total{key="_anonymous",model="m1"} 2.0' in metrics


async def test_client_keys_stay_here_and_the_neuron_token_is_sent() -> None:
    async with cortex(FakeNeuron("n1"), auth={"api_keys": ["client-key"]}) as c:
        c.gateway.fleet.nodes[0].token = "neuron-token"  # as [[neurons]] token would set it
        await c.client.post(
            CHAT,
            json={"model": "m1"},
            headers={"authorization": "Bearer client-key", "x-request-id": "r1"},
        )
        headers = c.neurons["n1"].seen[0]["headers"]
        assert headers["authorization"] == "Bearer neuron-token"
        assert headers["x-request-id"] == "r1"


async def test_asking_for_usage_leaves_the_rest_of_the_body_as_sent() -> None:
    """The option is spliced in, not re-serialised: non-ASCII text stays as the client sent it
    (json.dumps would escape it to twice its size) and so does the client's formatting."""
    raw = (
        '{ "model": "m1", "stream": true,\n  "messages": [{"role": "user", "content": "你好 ✓"}] }'
    )
    async with cortex(FakeNeuron("n1", chunks=2)) as c:
        response = await c.client.post(
            CHAT, content=raw.encode(), headers={"content-type": "application/json"}
        )
        assert sse_data(response.text)[-1] == "[DONE]"
        sent = c.neurons["n1"].seen[0]["raw"]
        assert sent == b'{"stream_options":{"include_usage":true},' + raw.encode()[1:]
        assert c.neurons["n1"].seen[0]["body"]["stream_options"] == {"include_usage": True}


async def test_stream_options_of_the_client_are_kept_when_usage_is_added() -> None:
    async with cortex(FakeNeuron("n1", chunks=2)) as c:
        body = {"model": "m1", "stream": True, "stream_options": {"continuous_usage_stats": True}}
        response = await c.client.post(CHAT, json=body)
        assert all("usage" not in d for d in sse_data(response.text))
        assert c.neurons["n1"].seen[0]["body"]["stream_options"] == {
            "continuous_usage_stats": True,
            "include_usage": True,
        }
