"""Two replicas that read the same neuron answers make the same plan, whatever each one did
before and whenever each answer reached it (issue 24, with the residency ladder on).

Each replica here is a real ``Loader`` and ``Poller`` fed the same ``/models`` answers; what
differs is what a replica could know on its own: when the answers arrived, its own timings
of earlier loads and wakes, its own requests, the exact free VRAM it read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from cortex.fleet.loader import Loader
from cortex.fleet.placement import NoRoom, Plan, Want, plan, rendezvous
from cortex.fleet.poller import Poller
from cortex.fleet.state import Fleet, Node
from cortex.metrics import CortexMetrics
from cortex.settings import Catalogue, CatalogueModel, CortexSettings

NODES = ("n1", "n2", "n3")
MODELS = ("m1", "m2", "m3", "m4", "m5")
T = 1.7e9
"""A moment by the neurons' clock (unix seconds)."""


@dataclass
class Replica:
    loader: Loader
    poller: Poller
    fleet: Fleet

    def read(
        self, name: str, models: list[dict[str, Any]], devices: tuple[dict[str, Any], ...] = ()
    ) -> Node:
        """``name``'s answer arrives now (the same answer every replica gets)."""
        node = self.fleet.node(name)
        node.up = True
        node.health = {"status": "ready", "max_loaded_models": 1, "devices": list(devices)}
        self.poller.apply(
            node,
            {m["id"]: m for m in models},
            instance=f"boot-{name}",
            epoch=7,
            asked=time.monotonic(),
        )
        return node

    def plan(self, model: str) -> Plan:
        candidates = [self.loader.candidate(n) for n in self.fleet.up()]
        return plan(Want(model), candidates, self.loader.eta(model))


@asynccontextmanager
async def replicas(count: int = 2, **loading: Any) -> AsyncIterator[list[Replica]]:
    settings = CortexSettings(
        neurons=[{"name": n, "endpoint": "http://127.0.0.1:9"} for n in NODES],
        loading=loading,
    )
    catalogue = Catalogue(models=[CatalogueModel(id=m) for m in MODELS])
    async with aiohttp.ClientSession() as session:
        made = []
        for _ in range(count):
            fleet = Fleet.build(settings.neurons, catalogue)
            metrics = CortexMetrics()
            poller = Poller(fleet, session, settings.poll, metrics)
            made.append(Replica(Loader(fleet, session, settings, metrics, poller), poller, fleet))
        yield made


def info(model: str, status: str = "ready", **extra: Any) -> dict[str, Any]:
    return {"id": model, "status": status, "in_flight": 0, "since": T - 60, **extra}


async def test_a_wake_or_a_cold_load_is_chosen_from_the_neurons_figures_not_our_own() -> None:
    # m2 sleeps on n2 (its cold start there took 0.2 s; never woken yet); room must be made.
    answers = {
        "n1": [info("m1", last_used=T, last_load_s=0.2)],
        "n2": [info("m2", "sleeping", last_load_s=0.2), info("m4", last_used=T + 1)],
        "n3": [info("m3", in_flight=1, last_used=T + 2)],
    }
    async with replicas() as (a, b):
        # Only a woke m2 before (on n2, fast) and timed a slow cold load: its own timings
        # favour the wake, b has none. The neurons report no wake: both use the default.
        a.loader.estimates.observe("m2", "n2", "wake", 0.01)
        a.loader.estimates.observe("m2", "n1", "cold", 30.0)
        for r in (a, b):
            for name, models in answers.items():
                r.read(name, models)
        assert a.plan("m2") == b.plan("m2") == Plan("n1", ("m1",))  # cold 0.2 s < wake 5 s
        own = plan(
            Want("m2"),
            [a.loader.candidate(n) for n in a.fleet.up()],
            lambda node, kind: a.loader.estimates.eta("m2", node, kind),
        )
        assert own == Plan("n2", ("m4",), wakes=True), "a's own timings would have disagreed"
        # Once a neuron reports a wake, every replica prefers it.
        answers["n2"][0] = info("m2", "sleeping", last_load_s=0.2, last_wake_s=0.05)
        for r in (a, b):
            r.read("n2", answers["n2"])
        assert a.plan("m2") == b.plan("m2") == Plan("n2", ("m4",), wakes=True)


async def test_last_use_ranks_by_the_neurons_clock_not_by_when_the_answer_arrived() -> None:
    # m4 (n2) was used 5 ms before m1 (n1); both answers were taken at the same moment.
    n1 = [info("m1", last_used=T + 0.005, idle_s=1.0)]
    n2 = [info("m4", last_used=T, idle_s=1.005)]
    n3 = [info("m3", in_flight=1, last_used=T + 0.5, idle_s=0.0)]
    async with replicas() as (a, b):
        # a hears from n1 first, b from n2 first, 50 ms apart: turned into each one's clock
        # on arrival, the two would rank m1 and m4 the other way round.
        a.read("n1", n1)
        b.read("n2", n2)
        await asyncio.sleep(0.05)
        a.read("n2", n2)
        b.read("n1", n1)
        for r in (a, b):
            r.read("n3", n3)
        assert a.plan("m5") == b.plan("m5") == Plan("n2", ("m4",))


async def test_a_model_never_used_ranks_by_when_it_became_ready() -> None:
    n1 = [info("m1", last_used=None, since=T + 10)]  # loaded after m4's last use, never used
    n2 = [info("m4", last_used=T)]
    n3 = [info("m3", in_flight=1)]
    async with replicas() as (a, b):
        for r in (a, b):
            for name, models in (("n1", n1), ("n2", n2), ("n3", n3)):
                r.read(name, models)
        assert a.plan("m5") == b.plan("m5") == Plan("n2", ("m4",))


async def test_our_own_request_that_ended_after_the_answer_does_not_make_a_model_idle() -> None:
    # The neuron counted one request on m1 (a's own); it ended after the answer arrived.
    n1 = [info("m1", in_flight=1, last_used=T)]
    n2 = [info("m4", last_used=T + 1)]
    n3 = [info("m3", in_flight=1, last_used=T + 2)]
    async with replicas() as (a, b):
        node = a.fleet.node("n1")
        node.model_in_flight["m1"] = 1
        for r in (a, b):
            for name, models in (("n1", n1), ("n2", n2), ("n3", n3)):
                r.read(name, models)
        node.model_in_flight["m1"] = 0  # a's request ends
        assert a.plan("m5") == b.plan("m5") == Plan("n2", ("m4",))
        # A request of a's own that started after the answer is a veto (the neuron refuses
        # to evict m4 too, once the request reaches it): a finds no room now.
        a.fleet.node("n2").model_in_flight["m4"] = 1
        with pytest.raises(NoRoom):
            a.plan("m5")


async def test_free_vram_read_a_few_megabytes_apart_breaks_no_tie_differently() -> None:
    def gpu(free: int) -> dict[str, Any]:
        return {"index": 0, "vram_free_mb": free, "vram_used_mb": 81920 - free}

    async with replicas() as (a, b):
        # Two empty neurons: a read n1 with 100 MB more free than n2, b the other way round.
        for r, (one, two) in ((a, (40_100, 40_000)), (b, (40_000, 40_100))):
            r.read("n1", [], (gpu(one),))
            r.read("n2", [], (gpu(two),))
        chosen = max(("n1", "n2"), key=lambda n: rendezvous("m5", n))
        assert a.plan("m5") == b.plan("m5") == Plan(chosen)


async def test_minimum_residency_counts_the_neurons_seconds_not_this_hosts_clock() -> None:
    async with replicas(min_residency=10.0) as (a, b):
        # Woken 9.9 s before its neuron answered, by a neuron whose clock is years off.
        woken = [info("m1", last_used=T, last_wake_s=0.1, since=0.0, state_s=9.9)]
        for r in (a, b):
            r.read("n1", woken)
            r.read("n2", [info("m4", in_flight=1)])
            r.read("n3", [info("m3", in_flight=1)])
        for r in (a, b):
            with pytest.raises(NoRoom):  # m1 is settling, the others are busy
                r.plan("m5")
        assert [r.settling for r in a.loader.candidate(a.fleet.node("n1")).residents] == [True]
        # The same answer, arrived 0.3 s ago: m1 has been awake 10.2 s now.
        a.fleet.node("n1").seen -= 0.3
        assert a.plan("m5") == Plan("n1", ("m1",))


async def test_a_model_we_are_putting_to_sleep_is_planned_as_the_neuron_reports_it() -> None:
    n1 = [info("m1", last_used=T)]
    n2 = [info("m4", last_used=T + 1)]
    n3 = [info("m3", in_flight=1)]
    async with replicas() as (a, b):
        for r in (a, b):
            for name, models in (("n1", n1), ("n2", n2), ("n3", n3)):
                r.read(name, models)
        # a's housekeeping is putting m1 to sleep (idle): out of a's routing at once, but the
        # neuron has not heard yet. b knows nothing of it.
        a.fleet.node("n1").evicting.add("m1")
        assert a.fleet.ready_nodes("m1") == []
        assert a.plan("m5") == b.plan("m5") == Plan("n1", ("m1",))
