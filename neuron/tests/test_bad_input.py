"""Bad input gets a clear error in the OpenAI envelope, and the neuron keeps serving."""

from __future__ import annotations

import pytest
from neuron_testing import Running, running, settings_for

CHAT = "/v1/chat/completions"


async def assert_error(response, status: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"model": "m1", "messages": [', 400, "not valid JSON"),
        (b"", 400, "body is empty"),
        (b"[1, 2]", 400, "must be a JSON object, not list"),
        (b"\xff\xfe", 400, "not UTF-8"),
        (b'{"messages": []}', 400, "'model' is required"),
        (b'{"model": 5}', 400, "'model' is required and must be a non-empty string"),
        (b'{"model": "m1", "stream": "yes"}', 400, "'stream' must be true or false"),
        (b'{"model": "unknown"}', 404, "model 'unknown' is not loaded"),
    ],
)
async def test_inference_rejects(neuron: Running, body: bytes, status: int, fragment: str) -> None:
    response = await neuron.client.post(
        CHAT, content=body, headers={"content-type": "application/json"}
    )
    await assert_error(response, status, fragment)
    assert (await neuron.client.get("/health")).status_code == 200


async def test_oversized_bodies_are_refused_without_reading_them() -> None:
    async with running(settings_for(max_body_bytes=1000)) as neuron:
        big = b'{"model": "m1", "prompt": "' + b"x" * 5000 + b'"}'
        await assert_error(await neuron.client.post(CHAT, content=big), 413, "limit is 1000")

        async def chunks():  # type: ignore[no-untyped-def]  # no content-length: chunked
            yield b"x" * 600
            yield b"x" * 600

        response = await neuron.client.post(CHAT, content=chunks())
        await assert_error(response, 413, "exceeds the limit of 1000 bytes")
        assert (await neuron.client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({}, "model_id: Field required"),
        ({"model_id": 7}, "model_id: Input should be a valid string"),
        ({"model_id": "m", "tensor_parallel": "two"}, "tensor_parallel"),
        ({"model_id": "m", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"model_id": "m", "colour": "red"}, "colour: unknown key"),
        ({"model_id": "m", "harness": "llamacpp"}, "unknown harness 'llamacpp'"),
        ({"model_id": "m", "engine_args": ["--trust-remote-code"]}, "not allowed"),
        ({"model_id": "m", "engine_args": ["--enforce-eager", "-tp"]}, "['-tp']"),
    ],
)
async def test_load_rejects_bad_specs(
    neuron: Running, spec: dict[str, object], fragment: str
) -> None:
    await assert_error(await neuron.client.post("/models/load", json=spec), 400, fragment)
    assert await neuron.models() == {}


async def test_allowed_engine_args_pass(neuron: Running) -> None:
    response = await neuron.load("m", engine_args=["--enforce-eager", "--max-num-seqs", "4"])
    assert response.status_code == 200


async def test_unload_needs_a_model_id(neuron: Running) -> None:
    await assert_error(await neuron.client.post("/models/unload", json={}), 400, "'model_id'")


async def test_unknown_routes_and_methods_use_the_envelope(neuron: Running) -> None:
    await assert_error(await neuron.client.get("/nope"), 404, "no route for GET /nope")
    await assert_error(await neuron.client.get(CHAT), 405, "GET is not allowed")
