"""Inference is relayed to the engine byte for byte; a client that goes away aborts it."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
from neuron_testing import Running, fake_harness, running, settings_for

from neuron.engine.process import ENGINE_KEEP_ALIVE_S, POOL_KEEP_ALIVE_S

RUNNING = re.compile(r'vllm:num_requests_running\{[^}]*model_name="(?P<m>[^"]+)"[^}]*\} (?P<n>\S+)')


async def engine_running(engine_url: str, model: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{engine_url}/metrics")).text
    for match in RUNNING.finditer(text):
        if match["m"] == model:
            return float(match["n"])
    raise AssertionError(f"no running gauge for {model} in {text!r}")


async def test_a_streamed_answer_arrives_unchanged(neuron: Running) -> None:
    engine_url = (await neuron.load("m1")).json()["model"]["engine"]["url"]
    body = {"model": "m1", "stream": True, "max_tokens": 5}
    body["stream_options"] = {"include_usage": True}
    async with httpx.AsyncClient() as direct:
        reference = (await direct.post(f"{engine_url}/v1/chat/completions", json=body)).content
    via = await neuron.client.post("/v1/chat/completions", json=body)
    assert via.status_code == 200
    assert via.headers["content-type"].startswith("text/event-stream")
    assert via.headers["x-fake-engine"] == "1"
    assert len(via.headers.get_list("date")) == 1  # Hypercorn's, not the engine's as well
    assert len(via.headers.get_list("server")) == 1
    # Same bytes except the per-request id and timestamp the engine makes up.
    normalise = re.compile(rb'"(id|created)": ?("[^"]*"|\d+)')
    assert normalise.sub(b"", via.content) == normalise.sub(b"", reference)
    events = [line for line in via.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 5


async def test_headers_pass_but_the_neurons_token_does_not() -> None:
    async with running(settings_for(auth_token="t0k")) as neuron:
        auth = {"authorization": "Bearer t0k"}
        await neuron.client.post("/models/load", json={"model_id": "m1"}, headers=auth)
        response = await neuron.client.post(
            "/v1/chat/completions",
            json={"model": "m1", "echo_headers": True},
            headers={**auth, "x-request-id": "req-42"},
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-42"
        assert response.headers["x-fake-engine-saw-authorization"] == "no"


async def test_every_openai_and_anthropic_path_is_relayed(neuron: Running) -> None:
    await neuron.load("m1")
    for path, extra in [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
        ("/v1/embeddings", {"input": ["a", "b"]}),
        ("/v1/messages", {"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"input": "hi"}),
        ("/tokenize", {"prompt": "hi"}),
        ("/detokenize", {"tokens": [1, 2]}),
    ]:
        response = await neuron.client.post(path, json={"model": "m1", **extra})
        assert response.status_code == 200, (path, response.text)
        assert response.headers["x-fake-engine"] == "1"
    stream = await neuron.client.post(
        "/v1/messages",
        json={"model": "m1", "stream": True, "max_tokens": 2, "messages": []},
    )
    assert "event: message_start" in stream.text
    assert stream.text.rstrip().endswith('"type": "message_stop"}')


async def test_engine_errors_pass_through_with_their_status(neuron: Running) -> None:
    await neuron.load("m1")
    response = await neuron.client.post(
        "/v1/chat/completions", json={"model": "m1", "fake_status": 400}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "fake engine error"
    metrics = (await neuron.client.get("/metrics")).text
    assert 'neuron_requests_total{model="m1",status="400"} 1.0' in metrics


async def test_client_disconnect_mid_stream_aborts_the_generation() -> None:
    settings = settings_for(harness={"vllm": fake_harness(FAKE_ENGINE_CHUNK_DELAY="0.05")})
    async with running(settings) as neuron:
        engine_url = (await neuron.load("m1")).json()["model"]["engine"]["url"]
        body = {"model": "m1", "stream": True, "max_tokens": 1000}
        async with neuron.client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.aiter_lines()
            for _ in range(3):
                await anext(lines)
            assert await engine_running(engine_url, "m1") == 1
            assert (await neuron.models())["m1"]["in_flight"] == 1
        # The client closed the stream after 3 of 1000 chunks.
        for _ in range(50):
            if await engine_running(engine_url, "m1") == 0:
                break
            await asyncio.sleep(0.05)
        assert await engine_running(engine_url, "m1") == 0
        assert (await neuron.models())["m1"]["in_flight"] == 0
        metrics = (await neuron.client.get("/metrics")).text
        assert 'neuron_requests_total{model="m1",status="499"} 1.0' in metrics


async def test_an_unreachable_engine_is_a_502(neuron: Running) -> None:
    await neuron.load("m1")
    slot = neuron.neuron.registry.get("m1")
    assert slot is not None
    slot.engine.url = "http://127.0.0.1:9"  # nothing listens on the discard port
    response = await neuron.client.post("/v1/chat/completions", json={"model": "m1"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert (await neuron.client.get("/health")).status_code == 200


async def test_a_client_gone_before_a_whole_answer_aborts_the_generation(
    neuron: Running,
) -> None:
    engine_url = (await neuron.load("m1")).json()["model"]["engine"]["url"]
    body = json.dumps({"model": "m1", "fake_sleep": 30}).encode()
    host, port = neuron.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: n\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    for _ in range(100):
        if await engine_running(engine_url, "m1") == 1:
            break
        await asyncio.sleep(0.02)
    assert await engine_running(engine_url, "m1") == 1
    writer.close()  # the client gives up 30 s before the answer would come
    await writer.wait_closed()

    for _ in range(50):
        if await engine_running(engine_url, "m1") == 0:
            break
        await asyncio.sleep(0.02)
    assert await engine_running(engine_url, "m1") == 0, "the engine is still generating"
    assert (await neuron.models())["m1"]["in_flight"] == 0
    metrics = (await neuron.client.get("/metrics")).text
    assert 'neuron_requests_in_flight{model="m1"} 0.0' in metrics
    assert 'neuron_requests_total{model="m1",status="499"} 1.0' in metrics
    answer = await neuron.client.post("/v1/chat/completions", json={"model": "m1"})
    assert answer.status_code == 200, "the neuron stopped serving"


async def test_a_silent_engine_is_a_504() -> None:
    async with running(settings_for(engine_read_timeout=0.3)) as neuron:
        await neuron.load("m1")
        response = await neuron.client.post(
            "/v1/chat/completions", json={"model": "m1", "fake_sleep": 2.0}
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "engine_timeout"


async def test_the_answer_echoes_cortexs_request_number(neuron: Running) -> None:
    await neuron.load("m1")
    for stream in (False, True):
        response = await neuron.client.post(
            "/v1/chat/completions",
            json={"model": "m1", "stream": stream, "max_tokens": 2},
            headers={"x-cortex-request": "17"},
        )
        assert response.status_code == 200
        assert response.headers["x-cortex-request"] == "17"


async def test_every_answer_to_a_numbered_request_echoes_it_errors_included() -> None:
    """cortex numbers each request on a connection; whatever the neuron answers carries the
    number back, refusals and errors as much as engine answers, so that cortex can tell a
    late answer from the one it waits for on every path."""
    echo = {"x-cortex-request": "5"}
    settings = settings_for(auth_token="t")
    async with running(settings) as neuron:
        client = neuron.client
        token = {"authorization": "Bearer t", **echo}
        answers = {
            "401 without the token": await client.post(
                "/v1/chat/completions", json={"model": "m1"}, headers=echo
            ),
            "400 bad body": await client.post("/v1/chat/completions", content=b"{", headers=token),
            "404 model not loaded": await client.post(
                "/v1/chat/completions", json={"model": "nope"}, headers=token
            ),
            "404 no route": await client.get("/nowhere", headers=token),
        }
        await client.post("/models/load", json={"model_id": "m1"}, headers=token)
        slot = neuron.neuron.registry.get("m1")
        assert slot is not None
        for stream in (False, True):
            answers[f"200 stream={stream}"] = await client.post(
                "/v1/chat/completions",
                json={"model": "m1", "stream": stream, "max_tokens": 2},
                headers=token,
            )
        slot.engine.url = "http://127.0.0.1:9"
        answers["502 engine unreachable"] = await client.post(
            "/v1/chat/completions", json={"model": "m1"}, headers=token
        )
        neuron.neuron.lifecycle.begin_drain()
        answers["503 draining"] = await client.post(
            "/v1/chat/completions", json={"model": "m1"}, headers=token
        )
        unanswered = await client.post(
            "/v1/chat/completions", json={"model": "m1"}, headers={"authorization": "Bearer t"}
        )
    for what, answer in answers.items():
        assert str(answer.status_code) == what.split()[0], (what, answer.text)
        assert answer.headers.get_list("x-cortex-request") == ["5"], what
    assert "x-cortex-request" not in unanswered.headers, "no number asked, none given"


ACCESS = re.compile(r'\[m1\] INFO: +127\.0\.0\.1:(?P<port>\d+) - "POST /v1/chat/completions ')


async def test_the_engine_keeps_a_pooled_connection_longer_than_the_neuron_does(
    neuron: Running, caplog: pytest.LogCaptureFixture
) -> None:
    # vLLM closes an idle connection after VLLM_HTTP_TIMEOUT_KEEP_ALIVE (default 5 s), the
    # neuron reuses one for POOL_KEEP_ALIVE_S: with the engine's default, a request sent on
    # one at the moment the engine closed it got a 502. The neuron sets it (the stand-in reads
    # it as vLLM does), so a connection idle past vLLM's default is still the engine's.
    assert ENGINE_KEEP_ALIVE_S > POOL_KEEP_ALIVE_S
    caplog.set_level(logging.INFO, logger="neuron.engine")
    await neuron.load("m1")
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    assert (await neuron.client.post("/v1/chat/completions", json=body)).status_code == 200
    await asyncio.sleep(5.5)
    assert (await neuron.client.post("/v1/chat/completions", json=body)).status_code == 200
    for _ in range(50):  # the engine's access-log lines arrive through its stdout
        ports = [m["port"] for r in caplog.records if (m := ACCESS.search(r.getMessage()))]
        if len(ports) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(ports) == 2 and ports[0] == ports[1], ports  # one connection, still open
