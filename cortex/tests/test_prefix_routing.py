"""Prefix affinity decides among neurons serving a model: the one holding the prompt's prefix,
unless its load passes the least loaded one's by more than the guard allows; a new
conversation goes to the least loaded, ties by rendezvous (the same in every replica); each
decision is counted by reason. ``policy = "load"`` is least-load routing as before."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from cortex_testing import free_port, served
from fake_neuron import FakeNeuron
from prometheus_client import generate_latest

from cortex.app import Gateway, build, create_app
from cortex.fleet.poller import Poller
from cortex.fleet.prefix import rendezvous
from cortex.fleet.routing import GUARD, LOAD, PREFIX, Router, choose
from cortex.fleet.state import Fleet, Load, Node
from cortex.metrics import CortexMetrics
from cortex.settings import Catalogue, CortexSettings, NeuronEntry, Poll, Routing

CHAT = "/v1/chat/completions"


def fleet(*queued: int) -> list[Node]:
    """Neurons n0, n1, ... whose engines report ``queued`` requests for m1."""
    out = []
    for i, q in enumerate(queued):
        node = Node(name=f"n{i}", base="", token=None)
        node.loads["m1"] = Load(running=q, waiting=0, kv_cache_usage=0.0)
        node.queued_others["m1"] = q
        out.append(node)
    return out


def names(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes]


def decide(
    load: list[float],
    held: dict[str, int],
    total: int = 100,
    margin: float = 2,
    ratio: float = 0.5,
) -> tuple[list[str], str]:
    """The order and reason for a prompt of ``total`` characters; ``held``: engine → the
    leading characters of it that engine holds."""
    nodes = [Node(name=f"n{i}", base="", token=None) for i in range(len(load))]
    ranked, reason = choose(nodes, load, held, total, lambda: 7, margin, ratio)
    return names(ranked), reason


def test_the_engine_holding_the_prefix_takes_it() -> None:
    assert decide([0, 0, 0], {"n2": 90}) == (["n2", "n0", "n1"], PREFIX)


def test_the_one_holding_the_most_of_it() -> None:
    assert decide([0, 0, 0], {"n0": 30, "n1": 90, "n2": 60}) == (["n1", "n0", "n2"], PREFIX)


def test_even_when_busier_within_the_guard() -> None:
    # allowed: (margin 2 + ratio 0.5 * least 2) * all of the prompt = 3
    assert decide([5, 2], {"n0": 100}) == (["n0", "n1"], PREFIX)


def test_the_guard_sends_it_to_the_least_loaded_when_the_prefix_engine_is_too_busy() -> None:
    assert decide([5.5, 2], {"n0": 100}) == (["n1", "n0"], GUARD)
    assert decide([3, 0], {"n0": 100}, margin=2, ratio=0) == (["n1", "n0"], GUARD)
    assert decide([3, 0], {"n0": 100}, margin=3, ratio=0) == (["n0", "n1"], PREFIX)


def test_the_guard_grows_with_the_load() -> None:
    assert decide([20, 12], {"n0": 100}) == (["n0", "n1"], PREFIX)  # 20 - 12 <= 2 + 6
    assert decide([21, 12], {"n0": 100}) == (["n1", "n0"], GUARD)


def test_the_guard_shrinks_with_what_only_that_engine_holds() -> None:
    # n1 holds the shared first 80 characters too: n0's gain is a fifth, allowed (2 + 1) / 5
    assert decide([2.5, 2], {"n0": 100, "n1": 80}) == (["n0", "n1"], PREFIX)
    assert decide([2.7, 2], {"n0": 100, "n1": 80}) == (["n1", "n0"], GUARD)
    assert decide([2.7, 2], {"n0": 100}) == (["n0", "n1"], PREFIX)  # all of it: 3 allowed


def test_among_several_holders_of_as_much_the_least_loaded() -> None:
    assert decide([4, 1, 0], {"n0": 50, "n1": 50}) == (["n1", "n2", "n0"], PREFIX)


def test_the_least_loaded_holding_the_most_is_a_prefix_decision() -> None:
    assert decide([3, 1], {"n0": 20, "n1": 50}) == (["n1", "n0"], PREFIX)


def test_a_prefix_every_engine_holds_is_decided_by_load() -> None:
    assert decide([3, 1], {"n0": 40, "n1": 40}) == (["n1", "n0"], LOAD)


def test_a_prefix_held_only_by_engines_that_are_gone_is_decided_by_load() -> None:
    assert decide([3, 1], {"n7": 100}) == (["n1", "n0"], LOAD)


def test_a_new_conversation_goes_to_the_least_loaded() -> None:
    assert decide([3, 1, 2], {}) == (["n1", "n2", "n0"], LOAD)


def test_ties_go_to_the_rendezvous_winner_of_the_conversation() -> None:
    nodes = [Node(name=f"n{i}", base="", token=None) for i in range(4)]
    for key in range(50):
        ranked, _ = choose(nodes, [1, 0, 0, 0], {}, 0, functools.partial(int, key), 2, 0.5)
        winner = max(("n1", "n2", "n3"), key=functools.partial(rendezvous, key))
        assert ranked[0].name == winner


def test_the_key_is_only_computed_for_a_tie() -> None:
    nodes = [Node(name=f"n{i}", base="", token=None) for i in range(2)]

    def key() -> int:
        raise AssertionError("no tie, no key")

    assert names(choose(nodes, [1, 0], {}, 0, key, 2, 0.5)[0]) == ["n1", "n0"]


def router(policy: str = "prefix", **more: Any) -> tuple[Router, CortexMetrics]:
    metrics = CortexMetrics()
    return Router(Routing(policy=policy, **more), metrics), metrics


def body(*contents: str) -> dict[str, Any]:
    roles = ("user", "assistant")
    messages = [{"role": "system", "content": "a long shared system prompt"}]
    messages += [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return {"model": "m1", "messages": messages}


def decisions(metrics: CortexMetrics) -> dict[str, float]:
    out = {}
    for reason in (PREFIX, LOAD, GUARD):
        value = metrics.registry.get_sample_value(
            "cortex_routing_decisions_total", {"model": "m1", "reason": reason}
        )
        out[reason] = value or 0.0
    return out


def test_a_conversation_stays_on_its_engine_turn_after_turn() -> None:
    r, metrics = router(guard_margin=4)
    nodes = fleet(0, 0)
    first, hashes = r.route(nodes, "m1", "m1", CHAT, body("hi"), 0)
    assert hashes is not None
    r.served("m1", hashes, first[0])
    turns = [("hi", "hello", "how are you?"), ("hi", "hello", "how are you?", "fine", "bye")]
    for turn in turns:
        first[0].queued_others["m1"] += 1  # its engine gets busier, within the guard
        ranked, hashes = r.route(nodes, "m1", "m1", CHAT, body(*turn), 0)
        assert ranked[0] is first[0]
        assert hashes is not None
        r.served("m1", hashes, ranked[0])
    assert decisions(metrics) == {PREFIX: 2, LOAD: 1, GUARD: 0}


def test_a_flood_on_the_engine_moves_new_turns_away() -> None:
    r, metrics = router(guard_margin=1, guard_ratio=0)
    nodes = fleet(0, 0)
    first, hashes = r.route(nodes, "m1", "m1", CHAT, body("hi"), 0)
    assert hashes is not None
    r.served("m1", hashes, first[0])
    first[0].queued_others["m1"] = 10
    ranked, _ = r.route(nodes, "m1", "m1", CHAT, body("hi", "hello", "more"), 0)
    assert ranked[0] is not first[0]
    assert decisions(metrics) == {PREFIX: 0, LOAD: 1, GUARD: 1}


def test_replicas_with_empty_indexes_agree_on_a_new_conversation() -> None:
    for user in range(20):
        picks = {
            router()[0].route(fleet(0, 0, 0), "m1", "m1", CHAT, body(f"user {user}"), t)[0][0].name
            for t in range(3)
        }
        assert len(picks) == 1


def test_one_neuron_is_no_decision_and_costs_nothing() -> None:
    r, metrics = router()
    nodes = fleet(0)
    assert r.route(nodes, "m1", "m1", CHAT, body("hi"), 0) == (nodes, None)
    assert decisions(metrics) == {PREFIX: 0, LOAD: 0, GUARD: 0}


def test_the_load_policy_ranks_by_load_and_counts_load() -> None:
    r, metrics = router("load")
    ranked, hashes = r.route(fleet(3, 1), "m1", "m1", CHAT, body("hi"), 0)
    assert (names(ranked), hashes) == (["n1", "n0"], None)
    assert decisions(metrics) == {PREFIX: 0, LOAD: 1, GUARD: 0}


def test_bad_routing_settings_are_refused() -> None:
    for bad in (
        {"policy": "random"},
        {"guard_margin": -1},
        {"chunk_chars": 1},
        {"index_entries": 0},
    ):
        with pytest.raises(ValueError, match="routing"):
            CortexSettings(routing=bad)


@contextlib.asynccontextmanager
async def gateway(
    policy: str,
) -> AsyncIterator[tuple[list[FakeNeuron], httpx.AsyncClient, Gateway]]:
    fakes = [FakeNeuron(name, report_load=True) for name in ("n1", "n2")]
    ports = [free_port() for _ in fakes]
    settings = CortexSettings(
        neurons=[
            {"name": f.name, "endpoint": f"http://127.0.0.1:{p}"}
            for f, p in zip(fakes, ports, strict=True)
        ],
        poll={"interval": 0.05, "timeout": 1},
        routing={"policy": policy},
    )
    gw = build(settings, Catalogue(models=[]))
    api = free_port()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(gw.session.close)
        await stack.enter_async_context(
            served(
                *[(f.app(), p) for f, p in zip(fakes, ports, strict=True)], (create_app(gw), api)
            )
        )
        c = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api}", timeout=10)
        )
        for _ in range(100):  # until both neurons are polled
            if len(gw.fleet.ready_nodes("m1")) == 2:
                break
            await asyncio.sleep(0.05)
        yield fakes, c, gw


async def test_through_the_relay_each_conversation_keeps_its_neuron() -> None:
    async with gateway("prefix") as (fakes, c, gw):
        for user in range(6):
            for turns in (("q",), ("q", "a", "q2"), ("q", "a", "q2", "a2", "q3")):
                payload = body(*(f"user {user} {t}" for t in turns))
                for stream in (False, True):
                    response = await c.post(CHAT, json={**payload, "stream": stream})
                    assert response.status_code == 200, response.text
        where: dict[str, set[str]] = {}
        for fake in fakes:
            for seen in fake.seen:
                user = seen["body"]["messages"][1]["content"].split()[1]
                where.setdefault(user, set()).add(fake.name)
        assert len(where) == 6 and all(len(on) == 1 for on in where.values()), where
        # The first request knew nothing; every later one found at least the system prompt
        # (nothing is loaded here, so new conversations follow it too).
        text = generate_latest(gw.metrics.registry).decode()
        assert 'cortex_routing_decisions_total{model="m1",reason="prefix"} 35.0' in text
        assert 'cortex_routing_decisions_total{model="m1",reason="load"} 1.0' in text


async def test_a_busy_neuron_loses_new_conversations_but_keeps_its_own() -> None:
    async with gateway("prefix") as (fakes, c, _):
        mine = "my own long question " * 10  # most of the prompt: worth waiting for
        first = await c.post(CHAT, json=body(mine))
        assert first.status_code == 200
        busy = next(f for f in fakes if f.seen)
        busy.in_flight["m1"] = 0
        busy.running["m1"] = 20  # reported on the next poll
        await asyncio.sleep(0.3)
        fresh = await c.post(CHAT, json=body("somebody new"))
        assert fresh.status_code == 200
        assert len(busy.seen) == 1  # the guard: 20 queued against 0
        # Within the guard: 1 + KV 0.1 / 2 against 0 + 2 * the 88% of the prompt only it has.
        busy.running["m1"] = 1
        await asyncio.sleep(0.3)
        again = await c.post(CHAT, json=body(mine, "ok", "more"))
        assert again.status_code == 200
        assert len(busy.seen) == 2


async def test_a_refused_request_teaches_the_index_nothing() -> None:
    async with gateway("prefix") as (fakes, c, gw):
        for fake in fakes:
            fake.answer_status = 400
        assert (await c.post(CHAT, json=body("hi"))).status_code == 400
        assert len(gw.router.index) == 0
        for fake in fakes:
            fake.answer_status = 200
        assert (await c.post(CHAT, json=body("hi"))).status_code == 200
        assert len(gw.router.index) == 2  # the system prompt, and the question


def two_ready(instance: str = "boot1") -> Fleet:
    fleet = Fleet.build(
        [NeuronEntry(name=f"n{i}", endpoint=f"http://127.0.0.1:{i + 1}") for i in range(2)],
        Catalogue(),
    )
    for node in fleet.nodes:
        node.up = True
        node.instance = instance
        node.models = {"m1": {"id": "m1", "status": "ready", "in_flight": 0}}
    return fleet


@pytest.mark.parametrize("change", ["unloaded", "failed", "down", "draining", "restarted"])
def test_a_neuron_whose_model_stops_being_ready_is_forgotten(change: str) -> None:
    fleet = two_ready()
    r, _ = router()
    r.watch(fleet)
    mine = body("hi", "hello", "more")
    n0, n1 = fleet.nodes
    _, hashes = r.route([n0, n1], "m1", "m1", CHAT, mine, 0)
    assert hashes is not None
    r.served("m1", hashes, n0)
    r.served("m1", hashes[:1], n1)  # both hold the system prompt
    fleet.changed()  # a change elsewhere forgets nothing
    assert r.index.lookup("m1", hashes) == {"n0": len(hashes), "n1": 1}
    if change == "unloaded":
        del n0.models["m1"]
    elif change == "failed":
        n0.models["m1"]["status"] = "failed"
    elif change == "down":
        n0.up = False
    elif change == "draining":
        n0.health = {"status": "draining"}
    else:
        n0.instance = "boot2"  # ready again at once, with an empty cache
    fleet.changed()
    assert r.index.lookup("m1", hashes) == {"n1": 1}


async def test_the_poller_tells_the_index_of_a_restart() -> None:
    fleet = two_ready()
    r, _ = router()
    r.watch(fleet)
    n0, n1 = fleet.nodes
    _, hashes = r.route([n0, n1], "m1", "m1", CHAT, body("hi"), 0)
    assert hashes is not None
    r.served("m1", hashes, n0)
    models = {"m1": {"id": "m1", "status": "ready", "in_flight": 0}}
    async with aiohttp.ClientSession() as session:
        poller = Poller(fleet, session, Poll(), CortexMetrics())
        assert poller.apply(n0, dict(models), instance="boot1", epoch=3, asked=0.0)
        assert r.index.lookup("m1", hashes) == {"n0": len(hashes)}  # the same boot
        assert poller.apply(n0, dict(models), instance="boot2", epoch=0, asked=0.0)
    assert r.index.lookup("m1", hashes) == {}


@pytest.mark.parametrize(
    ("waiting", "reason"),
    [((0, 0), PREFIX), ((1, 0), GUARD), ((1, 2), PREFIX), ((0, 3), PREFIX)],
)
def test_a_queue_at_the_prefix_engine_trips_the_guard_when_the_other_has_none(
    waiting: tuple[int, int], reason: str
) -> None:
    nodes = fleet(1, 0)  # n0 holds all of it, one request more: within the margin
    for node, queued in zip(nodes, waiting, strict=True):
        node.loads["m1"] = Load(running=1, waiting=queued, kv_cache_usage=0.0)
    ranked, why = choose(nodes, [1, 0], {"n0": 100}, 100, lambda: 7, 2, 0.5, "m1")
    assert why == reason
    assert names(ranked) == (["n0", "n1"] if reason == PREFIX else ["n1", "n0"])
    # Without the model (or a neuron that does not report load), the margin alone decides.
    assert choose(nodes, [1, 0], {"n0": 100}, 100, lambda: 7, 2, 0.5)[1] == PREFIX
    del nodes[0].loads["m1"]
    assert choose(nodes, [1, 0], {"n0": 100}, 100, lambda: 7, 2, 0.5, "m1")[1] == PREFIX


@pytest.mark.parametrize(
    ("waiting", "reason"),
    [((0, 0), PREFIX), ((1, 0), GUARD), ((2, 1), GUARD), ((1, 1), PREFIX), ((0, 1), PREFIX)],
)
def test_requests_awaiting_their_first_token_at_the_prefix_engine_trip_the_guard(
    waiting: tuple[int, int], reason: str
) -> None:
    """Equal load scores, but this cortex's requests at n0 have had no token yet (queued or
    in their prefill, which a new request's prefill waits behind) and fewer at n1 have."""
    nodes = fleet(1, 1)
    for node, count in zip(nodes, waiting, strict=True):
        node.model_waiting["m1"] = count
    ranked, why = choose(nodes, [1, 1], {"n0": 100, "n1": 60}, 100, lambda: 7, 2, 0.5, "m1")
    assert why == reason
    assert names(ranked) == (["n0", "n1"] if reason == PREFIX else ["n1", "n0"])


async def test_a_request_awaits_its_first_token_until_its_first_event_or_its_end() -> None:
    async with gateway("prefix") as (fakes, c, gw):
        for fake in fakes:
            fake.chunk_delay = fake.answer_delay = 0.3
        nodes = {n.name: n for n in gw.fleet.nodes}

        def counts() -> list[tuple[int, int]]:
            return [
                (n.model_in_flight.get("m1", 0), n.model_waiting.get("m1", 0))
                for n in nodes.values()
            ]

        async with c.stream("POST", CHAT, json={**body("hi"), "stream": True}) as response:
            assert response.status_code == 200
            assert sorted(counts()) == [(0, 0), (1, 1)]  # sent, no event yet
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data:"):
                pass
            assert sorted(counts()) == [(0, 0), (1, 0)]  # its first token came: decoding
            async for _ in lines:
                pass
        assert counts() == [(0, 0), (0, 0)]
        for fake in fakes:
            fake.answer_delay = 2.0
        whole = asyncio.create_task(c.post(CHAT, json=body("hi")))
        for _ in range(100):
            if sorted(counts()) != [(0, 0), (0, 0)]:
                break
            await asyncio.sleep(0.02)
        assert sorted(counts()) == [(0, 0), (1, 1)]  # a whole answer: waiting to its end
        assert (await whole).status_code == 200
        assert counts() == [(0, 0), (0, 0)]
        for fake in fakes:
            fake.answer_status = 503  # the first neuron refuses; the second answers 503 too
        assert (await c.post(CHAT, json=body("hi"))).status_code == 503
        assert counts() == [(0, 0), (0, 0)]
