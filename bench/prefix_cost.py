"""What prefix-affinity routing costs per request, against least-load: cortex's code, one process.

Usage: .venv/bin/python bench/prefix_cost.py [--requests 2000] [--repeat 5]

Two (or eight) neurons serving ``m0``, each reporting its engine's load. For chat bodies of
several sizes (a system prompt and a conversation of some turns, already parsed, as the
relay has them) it times ``Router.route`` plus ``Router.served`` for ``policy = "prefix"``,
and ``Router.route`` for ``policy = "load"``: the routing work the relay does per request.
The prefix index starts warm (every conversation seen once) and stays warm; each repeat
routes freshly parsed copies of the bodies (string hashes not cached, as in the relay). CPU time
(``time.process_time``) over ``--requests`` calls, best of ``--repeat``, in µs per request;
``rank`` alone is what the relay ran before (the least-load order, no decision counted).
It also reports the index's memory per entry (``tracemalloc``) when filled to its bound.

Prints one JSON line per case, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from typing import Any

from cortex.fleet.routing import Router, rank
from cortex.fleet.state import Load, Node
from cortex.metrics import CortexMetrics
from cortex.settings import Routing

PATH = "/v1/chat/completions"
CASES = {
    # name: (system prompt chars, turns, chars per message)
    "short (1 turn, 200 chars)": (0, 1, 200),
    "typical (2 KB system, 4 turns)": (2000, 4, 300),
    "long (8 KB system, 10 turns)": (8000, 10, 600),
    "huge (120 KB document)": (120_000, 1, 200),
}


def nodes(count: int) -> list[Node]:
    out = []
    for i in range(count):
        node = Node(name=f"n{i}", base="", token=None)
        node.up = True
        node.loads["m0"] = Load(running=i % 3, waiting=0, kv_cache_usage=0.1 * i)
        node.queued_others["m0"] = i % 3
        out.append(node)
    return out


def bodies(system: int, turns: int, chars: int, users: int = 64) -> list[dict[str, Any]]:
    prompt = ("You are a helpful assistant. " * (system // 29 + 1))[:system]
    out = []
    for user in range(users):
        messages = [{"role": "system", "content": prompt}] if system else []
        for turn in range(turns):
            text = (f"user {user} turn {turn}: " + "tell me more about caching " * 40)[:chars]
            messages.append({"role": "user", "content": text})
            if turn < turns - 1:
                messages.append({"role": "assistant", "content": text[::-1]})
        out.append({"model": "m0", "stream": True, "messages": messages})
    return out


def rank_alone(fleet: list[Node], n: int, r: int) -> float:
    """What the relay ran before ``Router``: ``rank`` alone."""
    best = float("inf")
    for _ in range(r):
        started = time.process_time()
        for turn in range(n):
            rank(fleet, "m0", turn)
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def per_request(
    policy: str, fleet: list[Node], payloads: list[dict[str, Any]], n: int, r: int
) -> float:
    router = Router(Routing(policy=policy), CortexMetrics())
    for payload in payloads:  # warm: every conversation seen once
        ranked, hashes = router.route(fleet, "m0", "m0", PATH, payload, 0)
        if hashes is not None:
            router.served("m0", hashes, ranked[0])
    best = float("inf")
    for _ in range(r):
        # Parsed afresh, untimed, as the relay has them: new string objects, whose hashes
        # Python has not cached yet (hashing the same objects again would cost nothing).
        fresh = [json.loads(json.dumps(payloads[i % len(payloads)])) for i in range(n)]
        started = time.process_time()
        for turn, payload in enumerate(fresh):
            ranked, hashes = router.route(fleet, "m0", "m0", PATH, payload, turn)
            if hashes is not None:
                router.served("m0", hashes, ranked[0])
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def bytes_per_entry(entries: int = 50_000) -> float:
    router = Router(Routing(policy="prefix", index_entries=entries), CortexMetrics())
    fleet = nodes(2)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(entries):  # one new piece per request, two engines alternately
        router.index.record("m0", [hash((i, "x"))], fleet[i % 2].name)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(router.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for count in (2, 8):
        fleet = nodes(count)
        for case, shape in CASES.items():
            payloads = bodies(*shape)
            row: dict[str, Any] = {"neurons": count, "body": case}
            row["rank_us"] = round(rank_alone(fleet, args.requests, args.repeat), 2)
            for policy in ("load", "prefix"):
                us = per_request(policy, fleet, payloads, args.requests, args.repeat)
                row[f"{policy}_us"] = round(us, 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    per_entry = bytes_per_entry()
    print(f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"index memory: {per_entry:.0f} bytes per entry\n")
    print(
        "| neurons | body | rank() alone µs (before) | policy load µs | policy prefix µs |\n"
        "|---|---|---|---|---|"
    )
    for row in rows:
        print(
            f"| {row['neurons']} | {row['body']} | {row['rank_us']} | {row['load_us']} "
            f"| {row['prefix_us']} |"
        )


if __name__ == "__main__":
    main()
