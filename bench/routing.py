"""What routing one request costs as the fleet grows: cortex's own code, in one process.

Usage: .venv/bin/python bench/routing.py [--requests 20000] [--repeat 5]

For fleets of 1 to 1,000 neurons, each up and reporting 20 models, with the requested model
ready on one neuron, on a quarter of them, or on all of them, it times what the relay runs
per request before it talks to a neuron: ``Fleet.knows``, ``Fleet.ready_nodes`` and
``rank``. CPU time (``time.process_time``) over ``--requests`` calls, best of ``--repeat``,
in µs per request. The fleet does not change while it runs, as between two polls.

Prints one JSON line per case, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from cortex.fleet.routing import rank
from cortex.fleet.state import Fleet, Node
from cortex.settings import Catalogue

MODELS = 20


def fleet(size: int, serving: str) -> Fleet:
    """``size`` neurons; ``m0`` is ready on one of them, a quarter, or all."""
    on = {"one": 1, "quarter": max(1, size // 4), "all": size}[serving]
    nodes = []
    for i in range(size):
        models = {f"m{j}": {"id": f"m{j}", "status": "ready"} for j in range(1, MODELS)}
        if i < on:
            models["m0"] = {"id": "m0", "status": "ready"}
        node = Node(name=f"n{i}", base=f"http://10.0.{i // 250}.{i % 250}:13131", token=None)
        node.up, node.health, node.models = True, {"status": "ready"}, models
        nodes.append(node)
    return Fleet(nodes, Catalogue(models=[]))


def per_request(f: Fleet, requests: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for turn in range(requests):
            f.knows("m0")
            rank(f.ready_nodes("m0"), "m0", turn)[:2]
        best = min(best, time.process_time() - started)
    return best / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for size in (1, 10, 100, 1000):
        for serving in ("one", "quarter", "all"):
            if size == 1 and serving != "one":
                continue
            us = per_request(fleet(size, serving), args.requests, args.repeat)
            row = {"neurons": size, "model_on": serving, "us_per_request": round(us, 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print("| neurons | model ready on | µs per request |\n|---|---|---|")
    for row in rows:
        print(f"| {row['neurons']} | {row['model_on']} | {row['us_per_request']} |")


if __name__ == "__main__":
    main()
