"""Engine output goes to the neuron's log, prefixed by model, and never blocks the engine."""

from __future__ import annotations

import logging

import pytest
from neuron_testing import fake_harness, running, settings_for


async def test_a_chatty_engine_never_blocks_on_its_pipe(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="neuron.engine")
    # 100k lines (~12 MB) before the engine serves: far beyond any pipe buffer.
    harness = fake_harness(FAKE_ENGINE_SPAM_LINES="100000")
    harness.startup_timeout = 60
    async with running(settings_for(harness={"vllm": harness})) as neuron:
        response = await neuron.load("chatty")
        assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "neuron.engine"]
    assert "[chatty] INFO fake engine starting model=chatty served=chatty" in lines
    assert any(line.startswith("[chatty] WARNING spam line 99999 ") for line in lines)
    assert any(line.startswith("[chatty] INFO fake engine serving on") for line in lines)
