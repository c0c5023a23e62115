"""Several cortex replicas on one fleet: how soon one sees another's load, and how many
engines a burst starts.

Usage: .venv/bin/python bench/replicas.py [--src TREE] [--mode watch|poll|plain]
           [--trials N] [--lags N] [--out FILE]

Starts three ``neuron`` processes (the stand-in engine of neuron/tests/fake_engine.py, room
for one model each) and three ``cortex serve`` replicas (their own instance names; the same
catalogue of four models and neurons), all run from the sources under TREE (default: this
checkout; give an unpacked older revision to measure "before"). ``--mode``: ``watch`` (the
default settings), ``poll`` (``[poll] watch = false``), ``plain`` (no ``watch`` key at all:
for revisions that predate it). The poll interval is the shipped 2 s.

1. Lag: a request for a cold model through replica A; the time from the moment the neuron
   lists it ``ready`` until replica B's ``/v1/models`` does (``--lags`` loads).
2. Burst: the fleet full (m1-m3, one per neuron), each replica last used a different model
   (A m1, then B m2, then C m3), then 48 simultaneous requests for m4 spread over the three
   replicas (the issue's case); engines started and models evicted, from the neurons' own
   metrics, per trial. The fleet is put back between trials.

Prints one JSON line per measurement and a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
MODELS = ("m1", "m2", "m3", "m4")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def neuron_config(port: int) -> str:
    return (
        f'host = "127.0.0.1"\nport = {port}\nmax_loaded_models = 1\ndrain_timeout = 5\n'
        f"[harness.vllm]\ncommand = {json.dumps([sys.executable, str(FAKE_ENGINE)])}\n"
        'startup_timeout = 30\nstop_timeout = 5\nenv = { FAKE_ENGINE_STARTUP_DELAY = "0.2" }\n'
    )


def cortex_config(
    name: str, port: int, metrics: int, models: Path, neurons: list[int], mode: str
) -> str:
    poll = "" if mode == "plain" else f"watch = {'true' if mode == 'watch' else 'false'}\n"
    text = "" if mode == "plain" else f'instance = "{name}"\n'
    text += (
        f'models_config = "{models}"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
        f'metrics_listen = "127.0.0.1:{metrics}"\n[poll]\n{poll}'
    )
    return text + "".join(
        f'[[neurons]]\nname = "n{i + 1}"\nendpoint = "http://127.0.0.1:{p}"\n'
        for i, p in enumerate(neurons)
    )


class Fleet:
    def __init__(self, src: Path, mode: str, tmp: Path) -> None:
        self.env = os.environ | {"PYTHONPATH": f"{src}/cortex/src:{src}/neuron/src"}
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.neurons = [free_port() for _ in range(3)]
        self.cortex = [(free_port(), free_port()) for _ in range(3)]
        self.mode = mode

    def _start(self, args: list[str], log: str) -> None:
        with (self.tmp / log).open("wb") as out:
            self.procs.append(
                subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            )

    def start(self) -> None:
        bin_dir = Path(sys.executable).parent
        for i, port in enumerate(self.neurons):
            config = self.tmp / f"neuron{i}.toml"
            config.write_text(neuron_config(port))
            self._start([str(bin_dir / "neuron"), "--config", str(config)], f"neuron{i}.log")
        models = self.tmp / "models.toml"
        models.write_text("".join(f'[[models]]\nid = "{m}"\n' for m in MODELS))
        for i, (port, metrics) in enumerate(self.cortex):
            config = self.tmp / f"cortex{i}.toml"
            name = f"cortex-{'abc'[i]}"
            config.write_text(cortex_config(name, port, metrics, models, self.neurons, self.mode))
            self._start(
                [str(bin_dir / "cortex"), "serve", "--config", str(config)], f"cortex{i}.log"
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def neuron(self, i: int) -> str:
        return f"http://127.0.0.1:{self.neurons[i]}"

    def replica(self, i: int) -> str:
        return f"http://127.0.0.1:{self.cortex[i][0]}"


async def until(check: Any, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("fleet not ready")


async def truth(client: httpx.AsyncClient, fleet: Fleet) -> list[dict[str, str]]:
    answers = await asyncio.gather(*(client.get(f"{fleet.neuron(i)}/models") for i in range(3)))
    return [{m["id"]: m["status"] for m in a.json()} for a in answers]


async def counters(client: httpx.AsyncClient, fleet: Fleet) -> tuple[float, float]:
    """Engines started (ready) and stopped, summed over the neurons."""
    started = stopped = 0.0
    for i in range(3):
        for line in (await client.get(f"{fleet.neuron(i)}/metrics")).text.splitlines():
            if line.startswith("neuron_model_load_seconds_count"):
                started += float(line.rsplit(" ", 1)[1])
            if line.startswith("neuron_engine_exits_total") and 'reason="stopped"' in line:
                stopped += float(line.rsplit(" ", 1)[1])
    return started, stopped


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def visible_on(client: httpx.AsyncClient, url: str, model: str) -> bool:
    data = (await client.get(f"{url}/v1/models")).json()["data"]
    return any(
        m["id"] == model and any(loc["status"] == "ready" for loc in m.get("locations", []))
        for m in data
    )


async def reset(client: httpx.AsyncClient, fleet: Fleet, wanted: list[str | None]) -> None:
    """Put ``wanted[i]`` (or nothing) on neuron i, and wait until every replica sees it."""
    for i, model in enumerate(wanted):
        for present in (await truth(client, fleet))[i]:
            if present != model:
                await client.post(f"{fleet.neuron(i)}/models/unload", json={"model_id": present})
        if model is not None:
            answer = await client.post(f"{fleet.neuron(i)}/models/load", json={"model_id": model})
            answer.raise_for_status()

    async def seen() -> bool:
        for r in range(3):
            fleet_view = (await client.get(f"{fleet.replica(r)}/fleet")).json()
            got = [[m["id"] for m in n["models"]] for n in fleet_view["neurons"]]
            if got != [[m] if m else [] for m in wanted]:
                return False
        return True

    await until(seen)


async def lag(client: httpx.AsyncClient, fleet: Fleet, model: str) -> tuple[float, float]:
    """An upper bound of the time between the neuron's ``ready`` and replica B's seeing it:
    from the start of the last look at the neuron that did not show it ready yet, to the
    end of the first look at B that does. Also the median time of one look at each (the
    resolution of the bound)."""
    asking = asyncio.create_task(
        client.post(f"{fleet.replica(0)}/v1/chat/completions", json=chat(model))
    )
    where = None
    while where is None:  # the neuron it goes to: from then on only that one is looked at
        states = await truth(client, fleet)
        where = next((i for i, t in enumerate(states) if model in t), None)
    not_ready = time.monotonic()
    rounds = []
    while True:
        began = time.monotonic()
        listed = await client.get(f"{fleet.neuron(where)}/models")
        if not any(m["id"] == model and m["status"] == "ready" for m in listed.json()):
            not_ready = began
        elif await visible_on(client, fleet.replica(1), model):
            break
        rounds.append(time.monotonic() - began)
        await asyncio.sleep(0.001)
    seen = time.monotonic()
    (await asking).raise_for_status()
    return seen - not_ready, statistics.median(rounds) if rounds else 0.0


async def burst_trial(client: httpx.AsyncClient, fleet: Fleet) -> dict[str, Any]:
    await reset(client, fleet, ["m1", "m2", "m3"])
    for r, model in enumerate(("m1", "m2", "m3")):
        (
            await client.post(f"{fleet.replica(r)}/v1/chat/completions", json=chat(model))
        ).raise_for_status()
        await asyncio.sleep(0.05)
    started, stopped = await counters(client, fleet)
    answers = await asyncio.gather(
        *(
            client.post(f"{fleet.replica(i % 3)}/v1/chat/completions", json=chat("m4"))
            for i in range(48)
        )
    )
    await asyncio.sleep(0.5)  # let a second load, if any, show
    after_started, after_stopped = await counters(client, fleet)
    return {
        "answered_200": sum(a.status_code == 200 for a in answers),
        "engines_started": after_started - started,
        "evicted": after_stopped - stopped,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO)
    parser.add_argument("--mode", choices=("watch", "poll", "plain"), default="watch")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--lags", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines: list[dict[str, Any]] = []

    def emit(record: dict[str, Any]) -> None:
        record = {"mode": args.mode, "src": str(args.src), **record}
        lines.append(record)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(args.src.resolve(), args.mode, Path(tmp))
        fleet.start()
        try:
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits()) as client:

                async def up() -> bool:
                    for r in range(3):
                        health = (await client.get(f"{fleet.replica(r)}/health")).json()
                        if health["neurons"]["up"] != 3:
                            return False
                    return True

                await until(up)
                lags, looks = [], []
                for n in range(args.lags):
                    await reset(client, fleet, [None, None, None])
                    bound, look = await lag(client, fleet, MODELS[n % 4])
                    lags.append(bound)
                    looks.append(look)
                    emit({"lag_ms": round(bound * 1000, 1), "look_ms": round(look * 1000, 1)})
                trials = []
                for _ in range(args.trials):
                    trials.append(await burst_trial(client, fleet))
                    emit(trials[-1])
                emit(
                    {
                        "summary": True,
                        "lag_ms_median": round(statistics.median(lags) * 1000, 1),
                        "lag_ms_max": round(max(lags) * 1000, 1),
                        "look_ms_median": round(statistics.median(looks) * 1000, 1),
                        "trials": len(trials),
                        "trials_with_one_start_one_eviction": sum(
                            t["engines_started"] == 1 and t["evicted"] == 1 for t in trials
                        ),
                        "engines_started": [t["engines_started"] for t in trials],
                        "evicted": [t["evicted"] for t in trials],
                        "all_answered": all(t["answered_200"] == 48 for t in trials),
                    }
                )
        finally:
            fleet.stop()
    if args.out:
        with args.out.open("a") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
