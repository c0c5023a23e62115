"""Every error a client can get: status, envelope (OpenAI or Anthropic), and still serving."""

from __future__ import annotations

import asyncio
import json

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"model": "m1", "messages": [', 400, "not valid JSON"),
        (b"", 400, "body is empty"),
        (b'"m1"', 400, "must be a JSON object, not str"),
        (b'{"messages": []}', 400, "'model' is required"),
        (b'{"model": ["m1"]}', 400, "'model' is required and must be a non-empty string"),
        (b'{"model": "m1", "stream": 1}', 400, "'stream' must be true or false"),
        (b'{"model": "who"}', 404, "model 'who' does not exist"),
        (b'{"model": "m2"}', 503, "model 'm2' is not ready on any neuron"),
    ],
)
async def test_openai_and_anthropic_errors(body: bytes, status: int, fragment: str) -> None:
    async with cortex(FakeNeuron("n1", models={"m1": "ready", "m2": "loading"})) as c:
        openai = await c.client.post(CHAT, content=body)
        assert openai.status_code == status
        error = openai.json()["error"]
        assert fragment in error["message"]
        assert set(error) == {"message", "type", "param", "code"}

        anthropic = await c.client.post("/v1/messages", content=body)
        assert anthropic.status_code == status
        assert anthropic.json()["type"] == "error"
        assert fragment in anthropic.json()["error"]["message"]
        if status == 503:
            # m2 is loading on n1: the default cold estimate (60 s), not gateway.retry_after.
            assert openai.headers["retry-after"] == "60"
            assert anthropic.json()["error"]["type"] == "overloaded_error"
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


@pytest.mark.parametrize("options", ['"yes"', "[true]", "1"])
async def test_stream_options_that_are_not_an_object_are_400(options: str) -> None:
    """cortex adds ``include_usage`` to OpenAI streams, so it reads ``stream_options``; a value
    it cannot add to is the client's mistake (it was a 500 once), not cortex's."""
    body = f'{{"model": "m1", "stream": true, "stream_options": {options}}}'.encode()
    async with cortex(FakeNeuron("n1")) as c:
        for path in (CHAT, "/v1/completions"):
            response = await c.client.post(path, content=body)
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["message"] == "'stream_options' must be an object"
            assert error["param"] == "stream_options"
        assert c.neurons["n1"].seen == []
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_without_on_demand_loads_a_catalogued_model_loaded_nowhere_is_503() -> None:
    neuron = FakeNeuron("n1")
    async with cortex(neuron, catalogue=("big",), loading={"on_demand": False}) as c:
        response = await c.client.post(CHAT, json={"model": "big"})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "model_not_ready"
        assert neuron.loads == []


async def test_oversized_bodies_are_413() -> None:
    async with cortex(FakeNeuron("n1"), gateway={"max_body_bytes": 100}) as c:
        response = await c.client.post(CHAT, json={"model": "m1", "prompt": "x" * 200})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200


async def test_upstream_errors_pass_through_with_their_status() -> None:
    async with cortex(FakeNeuron("n1", answer_status=400)) as c:
        response = await c.client.post(CHAT, json={"model": "m1"})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "fake neuron says no"


async def test_unknown_routes_and_methods() -> None:
    async with cortex() as c:
        assert (await c.client.get("/nope")).status_code == 404
        assert (await c.client.get("/nope")).json()["error"]["type"] == "not_found_error"
        assert (await c.client.get(CHAT)).status_code == 405
        messages = await c.client.get("/v1/messages")
        assert messages.json()["type"] == "error"


async def test_a_request_head_over_64_kib_is_431_and_the_server_goes_on() -> None:
    async with cortex(FakeNeuron("n1")) as c:
        port = c.client.base_url.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = b"x-padding: " + b"a" * (70 * 1024) + b"\r\n"
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: cortex\r\n" + big + b"\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ")
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["message"] == "request line and headers exceed 65536 bytes"
        assert error["code"] == "header_too_large"
        assert (await c.client.post(CHAT, json={"model": "m1"})).status_code == 200
