"""The residency ladder against stop-only: time spent waiting for models, on replayed traces.

Usage: .venv/bin/python bench/swap.py [--policy stop|ladder|both] [--trace ab|zipf|both]
           [--scale F] [--requests-ab N] [--requests-zipf N] [--seed S] [--out FILE]

Starts ``neuron`` processes running the stand-in engine (neuron/tests/fake_engine.py) with
GPU-like timings scaled by ``--scale`` (cold start 30 s and wake 0.5 s at scale 1; the default
0.1 makes them 3 s and 0.05 s, plus the stand-in's own process start, about 0.5 s here), and
one ``cortex serve`` in front of them, from this checkout's sources.

- ``ab``: one neuron with room for one awake model; requests alternate A, B, A, B, ...
- ``zipf``: two neurons with room for two awake models each, six catalogued models; each
  request's model drawn from a Zipf law (s = 1.1) with a fixed seed.

``stop``: ``[sleep] enabled = false`` (an evicted model stops, as before the ladder);
``ladder``: the defaults (it sleeps). Requests are sent one after another, streamed; for each,
the time to its first token. ``waiting_s``: the sum over requests of the first-token time
beyond a warm request's. ``switches``: engines started plus wakes, from the neurons' metrics.
Prints one JSON line per trace and policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
FAKE_ENGINE = REPO / "neuron" / "tests" / "fake_engine.py"
COLD_S, WAKE_S = 30.0, 0.5
HELLO = {"role": "user", "content": "hi"}
Timing = tuple[float, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def neuron_config(port: int, room: int, ladder: bool, cold: float, wake: float) -> str:
    env = f'{{ FAKE_ENGINE_STARTUP_DELAY = "{cold}", FAKE_ENGINE_WAKE_DELAY = "{wake}" }}'
    return (
        f'host = "127.0.0.1"\nport = {port}\nmax_loaded_models = {room}\ndrain_timeout = 5\n'
        f"[harness.vllm]\ncommand = {json.dumps([sys.executable, str(FAKE_ENGINE)])}\n"
        f"startup_timeout = 300\nstop_timeout = 5\nenv = {env}\n"
        f"[sleep]\nenabled = {'true' if ladder else 'false'}\nhost_ram_per_model_mb = 256\n"
    )


class Fleet:
    def __init__(
        self, tmp: Path, neurons: int, room: int, models: list[str], ladder: bool, timing: Timing
    ) -> None:
        cold, wake = timing
        self.env = os.environ | {"PYTHONPATH": f"{REPO}/cortex/src:{REPO}/neuron/src"}
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.neurons = [free_port() for _ in range(neurons)]
        self.api, self.metrics = free_port(), free_port()
        bin_dir = Path(sys.executable).parent
        for i, port in enumerate(self.neurons):
            config = tmp / f"neuron{i}.toml"
            config.write_text(neuron_config(port, room, ladder, cold, wake))
            self._start([str(bin_dir / "neuron"), "--config", str(config)], f"neuron{i}.log")
        catalogue = tmp / "models.toml"
        catalogue.write_text("".join(f'[[models]]\nid = "{m}"\n' for m in models))
        config = tmp / "cortex.toml"
        config.write_text(
            f'models_config = "{catalogue}"\n[gateway]\nlisten = "127.0.0.1:{self.api}"\n'
            f'metrics_listen = "127.0.0.1:{self.metrics}"\n'
            f"[loading]\ncold_estimate = {cold + 0.5}\nwake_estimate = {wake + 0.05}\n"
            + "".join(
                f'[[neurons]]\nname = "n{i + 1}"\nendpoint = "http://127.0.0.1:{p}"\n'
                for i, p in enumerate(self.neurons)
            )
        )
        self._start([str(bin_dir / "cortex"), "serve", "--config", str(config)], "cortex.log")

    def _start(self, args: list[str], log: str) -> None:
        with (self.tmp / log).open("wb") as out:
            self.procs.append(
                subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def first_token(client: httpx.AsyncClient, url: str, model: str) -> float | None:
    """Seconds to the first token of a streamed chat answer; ``None`` if it failed."""
    body = {"model": model, "stream": True, "max_tokens": 4, "messages": [HELLO]}
    began = time.monotonic()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        took = None
        async for line in response.aiter_lines():
            if took is None and line.startswith("data:") and '"content"' in line:
                took = time.monotonic() - began
        return took


async def counted(client: httpx.AsyncClient, fleet: Fleet) -> tuple[float, float]:
    """(engines started, wakes) over the fleet's neurons, from their own metrics."""
    starts = wakes = 0.0
    for port in fleet.neurons:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        for line in text.splitlines():
            if line.startswith("neuron_model_load_seconds_count{"):
                starts += float(line.rsplit(" ", 1)[1])
            elif line.startswith("neuron_model_wakes_total{"):
                wakes += float(line.rsplit(" ", 1)[1])
    return starts, wakes


def trace(kind: str, count: int, seed: int) -> tuple[list[str], int, int, list[str]]:
    """(requests, neurons, room per neuron, catalogue)."""
    if kind == "ab":
        return [("A", "B")[i % 2] for i in range(count)], 1, 1, ["A", "B"]
    models = [f"m{i + 1}" for i in range(6)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(6)]
    rng = random.Random(seed)
    return rng.choices(models, weights, k=count), 2, 2, models


async def run(kind: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    count = args.requests_ab if kind == "ab" else args.requests_zipf
    requests, neurons, room, models = trace(kind, count, args.seed)
    cold, wake = round(COLD_S * args.scale, 3), round(WAKE_S * args.scale, 3)
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp), neurons, room, models, policy == "ladder", (cold, wake))
        try:
            async with httpx.AsyncClient(timeout=600) as client:
                url = f"http://127.0.0.1:{fleet.api}"
                end = time.monotonic() + 60
                while time.monotonic() < end:
                    with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                        health = (await client.get(f"{url}/health")).json()
                        if health["neurons"]["up"] == neurons:
                            break
                    await asyncio.sleep(0.1)
                # A warm request's first token (the floor every request pays).
                await first_token(client, url, requests[0])
                warm = [await first_token(client, url, requests[0]) for _ in range(5)]
                floor = statistics.median(w for w in warm if w is not None)
                base_starts, base_wakes = await counted(client, fleet)
                times: list[float] = []
                failed = 0
                began = time.monotonic()
                for model in requests:
                    took = await first_token(client, url, model)
                    if took is None:
                        failed += 1
                    else:
                        times.append(took)
                wall = time.monotonic() - began
                starts, wakes = await counted(client, fleet)
        finally:
            fleet.stop()
    times.sort()
    return {
        "trace": kind,
        "policy": policy,
        "scale": args.scale,
        "cold_s": cold,
        "wake_s": wake,
        "requests": len(requests),
        "failed": failed,
        "cold_starts": int(starts - base_starts),
        "wakes": int(wakes - base_wakes),
        "switches": int(starts - base_starts + wakes - base_wakes),
        "waiting_s": round(sum(max(0.0, t - floor) for t in times), 2),
        "first_token_p50_s": round(times[len(times) // 2], 3) if times else None,
        "first_token_p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3)
        if times
        else None,
        "warm_first_token_s": round(floor, 3),
        "wall_s": round(wall, 1),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=("stop", "ladder", "both"), default="both")
    parser.add_argument("--trace", choices=("ab", "zipf", "both"), default="both")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--requests-ab", type=int, default=20)
    parser.add_argument("--requests-zipf", type=int, default=100)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    traces = ("ab", "zipf") if args.trace == "both" else (args.trace,)
    policies = ("stop", "ladder") if args.policy == "both" else (args.policy,)
    lines = []
    for kind in traces:
        for policy in policies:
            record = await run(kind, policy, args)
            lines.append(record)
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
    if args.out:
        with args.out.open("a") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
