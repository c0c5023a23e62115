"""The residency ladder against stop-only: time spent waiting for models, on replayed traces.

Usage: .venv/bin/python bench/swap.py [--engine stand-in|vllm] [--policy stop|ladder|both]
           [--trace ab|zipf|both] [--scale F] [--requests-ab N] [--requests-zipf N]
           [--zipf-models N] [--room N] [--sleepers N] [--seed S] [--out FILE] [--logs DIR]

Real ``neuron`` processes and one ``cortex serve`` in front of them, from this checkout's
sources, started and cleaned up with the end-to-end tests' helpers (``tests/e2e/e2e_support``).
The engines are either

- ``stand-in`` (neuron/tests/fake_engine.py) with GPU-like timings scaled by ``--scale``: cold
  start 30 s and wake 0.5 s at scale 1; the default 0.1 makes them 3 s and 0.05 s, plus the
  stand-in's own process start (1-2 s on a loaded 2-core machine); or
- ``vllm``: real vLLM on CPU serving the tiny test model (``scripts/make_tiny_model.py``), every
  catalogued model a copy of it. vLLM refuses ``--enable-sleep-mode`` on CPU, so a sleep only
  pauses the engine and frees nothing: what is measured is a wake against a cold start.

Traces:

- ``ab``: one neuron with room for one awake model; requests alternate A, B, A, B, ...
- ``zipf``: two neurons with room for ``--room`` awake models each, ``--zipf-models``
  catalogued models; each request's model drawn from a Zipf law (s = 1.1) with a fixed seed.

``stop``: ``[sleep] enabled = false`` (an evicted model stops, as before the ladder);
``ladder``: the defaults (it sleeps), with ``max_sleeping_models = --sleepers`` if given. The
``vllm`` defaults are smaller (A/B 6 requests; Zipf 48 requests, 4 models, room for one awake
model per neuron, 3 sleepers) to keep at most 4 engines alive on a shared machine.
Before the trace, the model of its first request is loaded and asked five times: the median
of those first tokens is a warm request's (the floor). Then the requests are sent one after
another, streamed; for each, the time to its first token. ``waiting_s``: the sum over
requests of the first-token time beyond the floor. ``first_loads``: requests that are their
model's first in the run (a cold start under either policy); ``waiting_steady_s`` leaves them
out. ``switches``: engines started plus wakes, from the neurons' metrics. ``engines_max``: the
most engines alive at once (sampled every second). Prints one JSON line per trace and policy,
then one per trace with the ratios of stop-only to ladder; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from e2e_support import (  # noqa: E402 - the path above first
    MAKE_TINY_MODEL,
    NeuronProcess,
    cortex_serving,
    engine_groups,
    free_port,
    neuron_running,
    prometheus_value,
    tiny_spec,
    write_config,
)

FAKE_ENGINE = REPO / "neuron" / "tests" / "fake_engine.py"
COLD_S, WAKE_S = 30.0, 0.5
HELLO = {"role": "user", "content": "hi"}
TIMEOUT = 900.0
"""A request's whole answer, a real cold start on a loaded machine included."""


@dataclass(frozen=True)
class Setup:
    requests: list[str]
    neurons: int
    room: int
    sleepers: int | None
    models: list[str]


class StandIn:
    """Neurons running the stand-in engine with scaled GPU-like timings."""

    name = "stand-in"

    def __init__(self, scale: float) -> None:
        self.cold, self.wake = round(COLD_S * scale, 3), round(WAKE_S * scale, 3)

    def neuron_config(self, path: Path, port: int, setup: Setup, ladder: bool) -> Path:
        env = {
            "FAKE_ENGINE_STARTUP_DELAY": str(self.cold),
            "FAKE_ENGINE_WAKE_DELAY": str(self.wake),
        }
        sleepers = f"max_sleeping_models = {setup.sleepers}\n" if setup.sleepers else ""
        path.write_text(
            f'host = "127.0.0.1"\nport = {port}\nmax_loaded_models = {setup.room}\n'
            "drain_timeout = 5\n"
            f"[harness.vllm]\ncommand = {json.dumps([sys.executable, str(FAKE_ENGINE)])}\n"
            "startup_timeout = 300\nstop_timeout = 5\n"
            f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in env.items())} }}\n"
            f"[sleep]\nenabled = {'true' if ladder else 'false'}\nhost_ram_per_model_mb = 256\n"
            + sleepers
        )
        return path

    def entry(self, model: str) -> dict[str, Any]:
        return {"id": model}

    def loading(self) -> dict[str, Any]:
        return {"cold_estimate": self.cold + 0.5, "wake_estimate": self.wake + 0.05}

    def describe(self) -> dict[str, Any]:
        return {"cold_s": self.cold, "wake_s": self.wake}


class Vllm:
    """Neurons running real vLLM on CPU, each model a copy of the tiny test model."""

    name = "vllm"

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    def neuron_config(self, path: Path, port: int, setup: Setup, ladder: bool) -> Path:
        # A sleeper here keeps its whole engine (~2 GiB for the tiny model with a 1 GiB KV
        # cache): charged so, and not the GPU default of 4 GiB, which would let only two
        # sleep within half of this machine's RAM.
        sleep: dict[str, Any] = {"enabled": ladder, "host_ram_per_model_mb": 2048}
        if ladder and setup.sleepers:
            sleep["max_sleeping_models"] = setup.sleepers
        return write_config(
            path, port=port, max_loaded_models=setup.room, drain_timeout=30.0, sleep=sleep
        )

    def entry(self, model: str) -> dict[str, Any]:
        spec = tiny_spec(self.model_dir, model, max_model_len=512)
        return {"id": spec.pop("model_id"), **spec}

    def loading(self) -> dict[str, Any]:
        return {"cold_start_timeout": TIMEOUT - 60}  # the estimates stay the defaults

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_dir.name}


Engine = StandIn | Vllm


@contextlib.contextmanager
def fleet(
    tmp: Path, engine: Engine, setup: Setup, ladder: bool
) -> Iterator[tuple[str, list[NeuronProcess]]]:
    """The neurons and cortex in front; yields (cortex URL, neurons). Everything they started
    is stopped on the way out (the e2e helpers SIGKILL and report what outlives a SIGTERM)."""
    with contextlib.ExitStack() as stack:
        neurons = []
        for i in range(setup.neurons):
            config = engine.neuron_config(tmp / f"neuron{i + 1}.toml", free_port(), setup, ladder)
            neurons.append(stack.enter_context(neuron_running(config, tmp / f"neuron{i + 1}.log")))
        catalogue = [engine.entry(m) for m in setup.models]
        named = {f"n{i + 1}": n.url for i, n in enumerate(neurons)}
        api, _ = stack.enter_context(
            cortex_serving(tmp, "cortex", named, catalogue, engine.loading())
        )
        yield api, neurons


async def first_token(client: httpx.AsyncClient, url: str, model: str) -> float | None:
    """Seconds to the first token of a streamed chat answer; ``None`` if it failed (not a 200,
    no token, no ``[DONE]``, or the connection broke)."""
    body = {"model": model, "stream": True, "max_tokens": 4, "messages": [HELLO]}
    began = time.monotonic()
    took = None
    done = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                print(f"# {model}: {response.status_code} {text[:300]}", file=sys.stderr)
                return None
            async for line in response.aiter_lines():
                if took is None and line.startswith("data:") and '"content"' in line:
                    took = time.monotonic() - began
                done = done or line.strip() == "data: [DONE]"
    except httpx.HTTPError as exc:
        print(f"# {model}: {exc!r}", file=sys.stderr)
        return None
    return took if done else None


async def counted(client: httpx.AsyncClient, neurons: list[NeuronProcess]) -> dict[str, float]:
    """Engine starts, wakes and their total seconds over the neurons, from their metrics."""
    names = {
        "starts": "neuron_model_load_seconds_count",
        "start_s": "neuron_model_load_seconds_sum",
        "wakes": "neuron_model_wake_seconds_count",
        "wake_s": "neuron_model_wake_seconds_sum",
        "load_failures": "neuron_model_load_failures_total",
    }
    totals = dict.fromkeys(names, 0.0)
    for neuron in neurons:
        text = (await client.get(f"{neuron.url}/metrics")).text
        for key, name in names.items():
            totals[key] += prometheus_value(text, name) or 0.0
    return totals


async def count_engines(neurons: list[NeuronProcess], peak: list[int]) -> None:
    """Keep ``peak[0]`` at the most engine process groups alive at once (until cancelled)."""
    while True:
        alive = await asyncio.to_thread(lambda: sum(len(engine_groups(n.pid)) for n in neurons))
        peak[0] = max(peak[0], alive)
        await asyncio.sleep(1.0)


def trace(kind: str, args: argparse.Namespace) -> Setup:
    if kind == "ab":
        requests = [("A", "B")[i % 2] for i in range(args.requests_ab)]
        return Setup(requests, 1, 1, args.sleepers, ["A", "B"])
    models = [f"m{i + 1}" for i in range(args.zipf_models)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(models))]
    requests = random.Random(args.seed).choices(models, weights, k=args.requests_zipf)
    return Setup(requests, 2, args.room, args.sleepers, models)


def quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3) if ordered else None


async def run(kind: str, policy: str, engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    setup = trace(kind, args)
    with contextlib.ExitStack() as stack:
        if args.logs:
            tmp = args.logs / f"{engine.name}-{kind}-{policy}"
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swap-bench-")))
        with fleet(tmp, engine, setup, policy == "ladder") as (url, neurons):
            peak = [0]
            sampler = asyncio.create_task(count_engines(neurons, peak))
            try:
                async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                    end = time.monotonic() + 60
                    while time.monotonic() < end:
                        with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                            health = (await client.get(f"{url}/health")).json()
                            if health["neurons"]["up"] == setup.neurons:
                                break
                        await asyncio.sleep(0.1)
                    # Load the first request's model, then a warm request's first token: the
                    # floor every request pays.
                    began = time.monotonic()
                    if await first_token(client, url, setup.requests[0]) is None:
                        raise SystemExit(f"the warm-up load of {setup.requests[0]} failed")
                    warm_up_s = time.monotonic() - began
                    warm = [await first_token(client, url, setup.requests[0]) for _ in range(5)]
                    floor = statistics.median(w for w in warm if w is not None)
                    before = await counted(client, neurons)
                    seen = {setup.requests[0]}
                    times: list[float] = []
                    first_loads: list[float] = []
                    failed = 0
                    began = time.monotonic()
                    for model in setup.requests:
                        took = await first_token(client, url, model)
                        if took is None:
                            failed += 1
                        elif model in seen:
                            times.append(took)
                        else:
                            first_loads.append(took)
                        seen.add(model)
                    wall = time.monotonic() - began
                    after = await counted(client, neurons)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
    delta = {key: after[key] - before[key] for key in after}
    steady = sum(max(0.0, t - floor) for t in times)
    everything = times + first_loads
    return {
        "engine": engine.name,
        "trace": kind,
        "policy": policy,
        **engine.describe(),
        "neurons": setup.neurons,
        "room": setup.room,
        "sleepers": setup.sleepers,
        "models": len(setup.models),
        "requests": len(setup.requests),
        "failed": failed,
        "cold_starts": int(delta["starts"]),
        "wakes": int(delta["wakes"]),
        "switches": int(delta["starts"] + delta["wakes"]),
        "load_failures": int(delta["load_failures"]),
        "cold_start_mean_s": round(delta["start_s"] / delta["starts"], 2)
        if delta["starts"]
        else None,
        "wake_mean_s": round(delta["wake_s"] / delta["wakes"], 3) if delta["wakes"] else None,
        "first_loads": len(first_loads),
        "waiting_s": round(steady + sum(max(0.0, t - floor) for t in first_loads), 2),
        "waiting_steady_s": round(steady, 2),
        "first_token_p50_s": quantile(everything, 0.5),
        "first_token_p99_s": quantile(everything, 0.99),
        "steady_first_token_p99_s": quantile(times, 0.99),
        "warm_first_token_s": round(floor, 3),
        "warm_up_load_s": round(warm_up_s, 1),
        "engines_max": peak[0],
        "wall_s": round(wall, 1),
    }


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stop-only's waiting over the ladder's, per trace, overall and in steady state."""
    out = []
    for kind in dict.fromkeys(r["trace"] for r in records):
        by = {r["policy"]: r for r in records if r["trace"] == kind}
        if {"stop", "ladder"} <= by.keys():
            stop, ladder = by["stop"], by["ladder"]
            out.append(
                {
                    "trace": kind,
                    "engine": stop["engine"],
                    "requests": stop["requests"],
                    "waiting_ratio": _ratio(stop["waiting_s"], ladder["waiting_s"]),
                    "steady_waiting_ratio": _ratio(
                        stop["waiting_steady_s"], ladder["waiting_steady_s"]
                    ),
                }
            )
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 1) if b > 0 else None


def make_tiny_model(work: Path) -> Path:
    """The tiny test model (2 layers), built once under the temporary folder (the neurons'
    ``allowed_paths``)."""
    model = work / "tiny-2"
    subprocess.run(
        [sys.executable, str(MAKE_TINY_MODEL), str(model)], check=True, capture_output=True
    )
    return model


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("stand-in", "vllm"), default="stand-in")
    parser.add_argument("--policy", choices=("stop", "ladder", "both"), default="both")
    parser.add_argument("--trace", choices=("ab", "zipf", "both"), default="both")
    parser.add_argument("--scale", type=float, default=0.1, help="stand-in timings (1 = GPU-like)")
    parser.add_argument("--requests-ab", type=int, help="default 20; vllm 6")
    parser.add_argument("--requests-zipf", type=int, help="default 400; vllm 48")
    parser.add_argument("--zipf-models", type=int, help="default 6; vllm 4")
    parser.add_argument("--room", type=int, help="awake models per Zipf neuron: default 2; vllm 1")
    parser.add_argument("--sleepers", type=int, help="max_sleeping_models: default unset; vllm 3")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--logs", type=Path, help="keep configs and logs here (one folder a run)")
    args = parser.parse_args()
    real = args.engine == "vllm"
    defaults = {
        "requests_ab": 6 if real else 20,
        "requests_zipf": 48 if real else 400,
        "zipf_models": 4 if real else 6,
        "room": 1 if real else 2,
        "sleepers": 3 if real else None,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    traces = ("ab", "zipf") if args.trace == "both" else (args.trace,)
    policies = ("stop", "ladder") if args.policy == "both" else (args.policy,)
    with tempfile.TemporaryDirectory(prefix="swap-model-") as work:
        engine: Engine = Vllm(make_tiny_model(Path(work))) if real else StandIn(args.scale)
        lines = []
        for kind in traces:
            for policy in policies:
                record = await run(kind, policy, engine, args)
                lines.append(record)
                sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()
    summary = ratios(lines)
    for line in summary:
        sys.stdout.write(json.dumps(line) + "\n")
    if args.out:
        with args.out.open("a") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines + summary)
    failed = sum(r["failed"] for r in lines)
    if failed:
        print(f"# {failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
