"""cortex names the neuron's boot (``instance``) beside the ``epoch`` in every command it
decides from a neuron's state, and plans again when a restarted neuron refuses one.

A scripted neuron on a real socket: these are the bytes cortex sends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from scripted import scripted

from cortex.fleet.loader import Loader
from cortex.fleet.poller import Poller
from cortex.fleet.state import Fleet
from cortex.metrics import CortexMetrics
from cortex.settings import Catalogue, CatalogueModel, CortexSettings


class Neuron:
    """Answers as a neuron of issue 24 would; keeps every command's body as sent."""

    def __init__(self) -> None:
        self.instance, self.epoch = "boot-1", 4
        self.models: list[dict[str, Any]] = []
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.restart_before_next = False
        """Restart (a new boot, its epoch where the last one's was) as the next command arrives,
        and refuse it: what a neuron restarted since cortex's last read answers."""
        self.no_sleep = False
        """Refuse sleeps (409 ``no_sleep``: sleep off, or its budget full), as a neuron does."""
        self.hold: asyncio.Event | None = None
        """When set: a sleep's answer waits for it (``asked`` is set once the sleep arrived)."""
        self.asked = asyncio.Event()

    def state(self) -> dict[str, Any]:
        return {"instance": self.instance, "epoch": self.epoch, "models": self.models}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            length = next(
                (int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length:")),
                0,
            )
            body = await reader.readexactly(length)
            status, extra, answer = 200, {}, self.answer(method, path.split("?")[0], body)
            if path == "/models":
                extra = {"X-Neuron-Instance": self.instance, "X-Neuron-Epoch": str(self.epoch)}
            elif isinstance(answer, tuple):
                status, answer = answer
            if path == "/models/sleep" and self.hold is not None:
                self.asked.set()
                await self.hold.wait()
            raw = json.dumps(answer).encode()
            head_out = f"HTTP/1.1 {status} X\r\ncontent-length: {len(raw)}\r\n"
            head_out += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            writer.write(head_out.encode() + b"content-type: application/json\r\n\r\n" + raw)
            await writer.drain()

    def answer(self, method: str, path: str, body: bytes) -> Any:
        if path == "/health":
            return {"status": "ready", "max_loaded_models": 1, **self.state()}
        if path == "/discovery":
            return {"harnesses": ["vllm"], "max_loaded_models": 1}
        if path == "/models":
            return self.models
        if path == "/models/watch":
            return self.state()
        self.commands.append((path, json.loads(body)))
        if self.restart_before_next:
            self.restart_before_next = False
            self.instance, self.models = "boot-2", []
            error = {"message": "restarted", "type": "conflict_error", "code": "stale_epoch"}
            return 409, {"error": error, "state": self.state()}
        sent = json.loads(body)
        if sent.get("instance") not in (None, self.instance):  # decided on another boot
            error = {"message": "another boot", "type": "conflict_error", "code": "stale_epoch"}
            return 409, {"error": error, "state": self.state()}
        if path == "/models/sleep" and self.no_sleep:
            error = {
                "message": "sleep is off",
                "type": "insufficient_resources",
                "code": "no_sleep",
            }
            return 409, {"error": error}
        model = sent["model_id"]
        if path == "/models/load":
            self.models = [{"id": model, "status": "ready", "in_flight": 0}]
            self.epoch += 2
            return {"status": "loaded", "model": self.models[0], "state": self.state()}
        self.models = [{**m, "status": "sleeping"} for m in self.models]
        self.epoch += 2
        return {"status": "sleeping", "model": self.models[0], "state": self.state()}


@asynccontextmanager
async def cortex(neuron: Neuron, **loading: Any) -> AsyncIterator[tuple[Loader, Fleet, Poller]]:
    async with scripted(neuron.serve) as url, aiohttp.ClientSession() as session:
        settings = CortexSettings(
            neurons=[{"name": "n1", "endpoint": url}], loading=loading, poll={"watch": False}
        )
        fleet = Fleet.build(settings.neurons, Catalogue(models=[CatalogueModel(id="m1")]))
        metrics = CortexMetrics()
        poller = Poller(fleet, session, settings.poll, metrics)
        await poller.poll_once()
        yield Loader(fleet, session, settings, metrics, poller), fleet, poller


async def test_a_load_names_the_boot_and_the_epoch_it_was_planned_from() -> None:
    neuron = Neuron()
    async with cortex(neuron) as (loader, _, _):
        await loader.ensure("m1")
    [(path, body)] = neuron.commands
    assert path == "/models/load"
    assert (body["instance"], body["epoch"], body["evict"]) == ("boot-1", 4, [])


async def test_a_restarted_neuron_refuses_and_cortex_plans_again_from_the_new_boot() -> None:
    neuron = Neuron()
    async with cortex(neuron) as (loader, fleet, _):
        # Between cortex's read and its command the neuron restarted, at the same epoch.
        neuron.restart_before_next = True
        await loader.ensure("m1")
        assert fleet.node("n1").instance == "boot-2"
    sent = [(body["instance"], body["epoch"]) for _, body in neuron.commands]
    assert sent == [("boot-1", 4), ("boot-2", 4)]


async def test_an_idle_sleep_names_the_boot_it_judged_idle_on() -> None:
    neuron = Neuron()
    neuron.models = [{"id": "m1", "status": "ready", "in_flight": 0, "idle_s": 100.0}]
    async with cortex(neuron, idle_ttl=0.05) as (loader, _, _):
        await loader.housekeeping()  # first sight of m1
        await asyncio.sleep(0.06)
        began = time.monotonic()
        await loader.housekeeping()
        assert time.monotonic() - began < 5
    [(path, body)] = neuron.commands
    assert path == "/models/sleep"
    assert body["instance"] == "boot-1" and "epoch" not in body


async def test_an_idle_unload_names_the_boot_judged_on_though_a_poll_read_a_new_one() -> None:
    neuron = Neuron()
    neuron.models = [{"id": "m1", "status": "ready", "in_flight": 0, "idle_s": 100.0}]
    neuron.no_sleep, neuron.hold = True, asyncio.Event()
    async with cortex(neuron, idle_ttl=0.05) as (loader, fleet, poller):
        await loader.housekeeping()  # first sight of m1
        await asyncio.sleep(0.06)
        job = asyncio.create_task(loader.housekeeping())  # judged idle on boot-1: a sleep
        await neuron.asked.wait()
        # The neuron restarts (it loads m1 again, as a default model) and a poll reads the new
        # boot before boot-1's refusal of the sleep arrives; cortex unloads instead.
        neuron.instance, neuron.epoch = "boot-2", 1
        neuron.models = [{"id": "m1", "status": "ready", "in_flight": 0, "idle_s": 0.0}]
        await poller.poll_once()
        assert fleet.node("n1").instance == "boot-2"
        neuron.hold.set()
        await asyncio.wait_for(job, 5)
    sent = [(path, body["instance"]) for path, body in neuron.commands]
    assert sent == [("/models/sleep", "boot-1"), ("/models/unload", "boot-1")]
    assert neuron.models[0]["status"] == "ready"  # boot-2 refused boot-1's judgement
