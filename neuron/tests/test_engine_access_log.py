"""The neuron's own reads of its engines (``/health`` while starting, ``/metrics`` every few
seconds and on every scrape) leave no lines in the engines' access logs, which the neuron's
log carries; every request a client makes keeps its line."""

from __future__ import annotations

import asyncio
import logging

import pytest
from neuron_testing import fake_harness, running, settings_for

from neuron.engine.process import POLLED, engine_argv
from neuron.settings import Harnesses, ModelSpec


def test_the_engine_is_told_to_leave_the_polled_paths_out_of_its_access_log() -> None:
    argv = engine_argv(ModelSpec(model_id="m"), fake_harness(), 20000)
    assert "--disable-access-log-for-endpoints=/health,/metrics" in argv
    assert POLLED == ("/health", "/metrics")


async def test_polls_leave_no_access_log_lines_and_requests_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="neuron.engine")
    harness = fake_harness(FAKE_ENGINE_COUNT_SCRAPES="1")
    settings = settings_for(harness=Harnesses(vllm=harness), health_interval=0.2)
    async with running(settings) as neuron:
        assert (await neuron.load("m")).status_code == 200
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert (await neuron.client.post("/v1/chat/completions", json=chat)).status_code == 200
        await asyncio.sleep(1.0)  # about five reads of the engine's /metrics by the watch
        scraped = (await neuron.client.get("/metrics")).text
    reads = [
        float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("vllm:fake_scrapes_total{")
    ]
    assert reads and reads[0] >= 4, reads  # the engine's /metrics was really read, often
    lines = [r.getMessage() for r in caplog.records if r.name == "neuron.engine"]
    access = [line for line in lines if '" HTTP/' in line or 'HTTP/1.1"' in line]
    assert [line for line in access if '"POST /v1/chat/completions HTTP/1.1" 200' in line]
    assert not [line for line in access if "GET /metrics" in line or "GET /health" in line]
