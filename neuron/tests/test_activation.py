"""Activation: default models load one after another; failures don't stop the rest."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
from neuron_testing import fake_harness, running, settings_for

from neuron.settings import ModelSpec


async def wait_status(neuron, status: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    for _ in range(200):
        health = (await neuron.client.get("/health")).json()
        if health["status"] == status:
            return health  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {status}: {health}")


async def test_a_failing_default_model_does_not_stop_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="neuron")
    defaults = [
        ModelSpec(model_id="broken", source="/nonexistent/model"),
        ModelSpec(model_id="good"),
    ]
    async with running(settings_for(default_models=defaults)) as neuron:
        await wait_status(neuron, "ready")
        models = await neuron.models()
        assert models["broken"]["status"] == "failed"
        assert models["good"]["status"] == "ready"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("default model broken failed to load") for m in warnings)
    infos = [r.getMessage() for r in caplog.records if r.name == "neuron.lifecycle"]
    assert any(m.startswith("default model good ready in") for m in infos)


async def test_while_activating_pending_defaults_are_listed_as_loading() -> None:
    defaults = [ModelSpec(model_id="first"), ModelSpec(model_id="second")]
    harness = fake_harness(FAKE_ENGINE_STARTUP_DELAY="1.0")
    async with running(settings_for(default_models=defaults, harness={"vllm": harness})) as neuron:
        health = (await neuron.client.get("/health")).json()
        assert health["status"] == "activating"
        models = await neuron.models()
        assert models["first"]["status"] == "loading"
        assert models["second"]["status"] == "loading"
        chat = await neuron.client.post("/v1/chat/completions", json={"model": "second"})
        assert chat.status_code == 503
        assert chat.json()["error"]["code"] == "model_loading"
        await wait_status(neuron, "ready")
        assert {m["status"] for m in (await neuron.models()).values()} == {"ready"}


async def test_an_empty_list_is_a_quiet_no_op(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="neuron")
    async with running(settings_for(default_models=[])) as neuron:
        await wait_status(neuron, "ready")
        assert await neuron.models() == {}
    assert not [r for r in caplog.records if "default model" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_ready_is_sent_to_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        async with running(settings_for(default_models=[ModelSpec(model_id="m")])) as neuron:
            await wait_status(neuron, "ready")
            assert sock.recv(100) == b"READY=1"
        assert sock.recv(100) == b"STOPPING=1"
