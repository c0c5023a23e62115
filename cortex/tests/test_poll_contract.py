"""A neuron's answer that breaks the contract costs that neuron its poll, never the poller.

The neuron is marked down after ``down_after`` such polls with the reason in ``/fleet`` and
the log; the other neurons are polled as before; it comes back once it answers properly.
"""

from __future__ import annotations

import logging

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

BROKEN = {
    "in_flight words": ("/models", b'[{"id": "m1", "status": "ready", "in_flight": "lots"}]'),
    "models not a list": ("/models", b'{"m1": "ready"}'),
    "model not an object": ("/models", b'[["m1", "ready"]]'),
    "model without id": ("/models", b'[{"status": "ready"}]'),
    "devices an object": ("/models", b'[{"id": "m1", "status": "ready", "devices": {}}]'),
    "deep": ("/models", b"[" * 100_000),
    "huge number": (
        "/models",
        b'[{"id": "m1", "status": "ready", "in_flight": 1' + b"0" * 5000 + b"}]",
    ),
    "device not an object": ("/health", b'{"status": "ready", "devices": [5]}'),
    "vram words": (
        "/health",
        b'{"status": "ready", "devices": [{"index": 0, "vram_used_mb": "x"}]}',
    ),
    "health a list": ("/health", b"[]"),
    "not json": ("/health", b"<html>oops</html>"),
    "discovery devices": ("/discovery", b'{"devices": "none"}'),
}


@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_answer_is_a_failed_poll_with_its_reason(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, body = BROKEN[case]
    bad, good = FakeNeuron("n1"), FakeNeuron("n2", models={"m2": "ready"})
    async with cortex(bad, good) as c:  # down_after = 2
        node = c.gateway.fleet.node("n1")
        bad.broken[path] = body
        node.discovery = None  # so /discovery is asked for again
        good.models["m3"] = "ready"
        with caplog.at_level(logging.WARNING, "cortex.poller"):
            await c.poll()
            await c.poll()
        assert not node.up
        assert "breaks the contract" in (node.last_error or "")
        assert path in (node.last_error or "")
        fleet = (await c.client.get("/fleet")).json()
        shown = next(n for n in fleet["neurons"] if n["name"] == "n1")
        assert shown["status"] == "down" and shown["error"] == node.last_error
        assert [r for r in caplog.records if "breaks the contract" in r.getMessage()]
        # The other neuron was polled all along: its new model is there.
        assert c.gateway.fleet.node("n2").status_of("m3") == "ready"
        chat = await c.client.post("/v1/chat/completions", json={"model": "m3"})
        assert chat.status_code == 200

        bad.broken.clear()
        await c.poll()
        assert node.up and node.last_error is None


async def test_the_engine_load_fields_are_optional_and_checked() -> None:
    fake = FakeNeuron("n1")
    async with cortex(fake) as c:
        info = c.gateway.fleet.node("n1").models["m1"]
        assert (info["running"], info["waiting"], info["kv_cache_usage"]) == (None, None, None)
        fake.broken["/models"] = (
            b'[{"id": "m1", "status": "ready", "running": 2, "waiting": 1, "kv_cache_usage": 0.5}]'
        )
        await c.poll()
        info = c.gateway.fleet.node("n1").models["m1"]
        assert (info["running"], info["waiting"], info["kv_cache_usage"]) == (2, 1, 0.5)


@pytest.mark.parametrize(
    ("load", "read"),
    [
        (b'"running": -1, "waiting": 1, "kv_cache_usage": 0.5', (None, 1, 0.5)),
        (b'"running": 2, "waiting": "many", "kv_cache_usage": 0.5', (2, None, 0.5)),
        (b'"running": 2, "waiting": 1, "kv_cache_usage": 7', (2, 1, None)),
        (b'"running": 2, "waiting": 1, "kv_cache_usage": NaN', (2, 1, None)),
        (b'"running": 2.5, "waiting": 1, "kv_cache_usage": Infinity', (None, 1, None)),
    ],
)
async def test_an_invalid_engine_load_is_unknown_and_the_poll_goes_on(
    load: bytes, read: tuple[int | None, int | None, float | None]
) -> None:
    """The load fields are optional: a bad one is ``None``; the model, its neuron and the
    other fields are kept (the required fields stay strict, as above)."""
    fake = FakeNeuron("n1")
    async with cortex(fake) as c:
        fake.broken["/models"] = b'[{"id": "m1", "status": "ready", ' + load + b"}]"
        await c.poll()
        node = c.gateway.fleet.node("n1")
        assert node.up and node.last_error is None
        info = node.models["m1"]
        assert info["status"] == "ready"
        assert (info["running"], info["waiting"], info["kv_cache_usage"]) == read
