"""What a neuron's own proxy adds in front of its engine: straight at the engine, and through it.

Usage: .venv/bin/python bench/neuron_proxy.py [--rounds 3] [--seconds 10] [--concurrency 32]
           [--streams 200] [--chunks 100] [--chunk-gap-ms 10] [--json results.jsonl]
       .venv/bin/python bench/neuron_proxy.py --real [--rounds 1] [--seconds 15]
           [--concurrency 4] [--max-tokens 16] [--streams 8] [--chunks 64]

A real ``neuron`` process (``.venv/bin/neuron --config <tmp toml>``) holds one default model.

- Ceiling (default): the "engine" is the fast fake upstream of bench/benchlib.py, started by
  the neuron through its ``[harness.vllm] command`` (this script's ``engine`` mode, which
  accepts and ignores vLLM's flags). The neuron runs alone on CPU 1; the engine and the load
  generator (this process) share CPU 0.
- ``--real``: the engine is real vLLM (the CPU build) serving the tiny test model (48 layers,
  float32, ``--enforce-eager``); small loads, nothing pinned (vLLM needs both cores).

Every round starts a fresh neuron, waits until its model is ready and then measures both
targets, in rotated order: ``direct`` (the engine's own URL, from ``GET /models``) and
``neuron`` (the neuron's ``/v1/chat/completions``). Per target and round:

- throughput: --concurrency workers send non-streaming chats for --seconds: requests/s,
  latency p50/p99, the neuron's CPU per request (user + system time of the neuron process
  alone, all its threads, from /proc) and the engine's (its whole process group);
- burst: --streams streams start together: time to first chunk and gap between chunks
  p50/p99, lost and merged chunks (ceiling only: a real model's text is not known in
  advance), the neuron's and the engine's CPU per chunk;
- the neuron's RSS at the end.

Prints one JSON line per target and round, then a markdown table of the median with the
min-max spread, and, per round, what going through the neuron changed.
Also: ``neuron_proxy.py engine --port N [--cpu C] [--chunks N] [--chunk-gap-ms G] ...`` is the
fake engine the neuron starts in the ceiling run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import benchlib
import gateways
from benchlib import cell, chat_body, cpu_seconds, free_port, get_json, quiesce, rss_bytes

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLIENT_CPU, NEURON_CPU = 0, 1
MIB = 1024 * 1024
TARGETS = ("direct", "neuron")
REAL_MODEL = "tiny"
REAL_LAYERS = 48
"""As in the e2e tests: the 2-layer model decodes so fast on 2 cores that vLLM's API server
starves; with 48 layers a stream runs at ~80 tokens/s."""
REAL_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

ROWS: list[tuple[str, str, str]] = [
    ("neuron start to model ready, s", "ready_s", "{:.1f}"),
    ("requests/s @{concurrency}", "rps", "{:,.1f}"),
    ("latency p50, ms", "latency_p50_ms", "{:.2f}"),
    ("latency p99, ms", "latency_p99_ms", "{:.2f}"),
    ("failed requests (errors + bad answers)", "failed_requests", "{:.0f}"),
    ("neuron CPU per request, ms", "neuron_cpu_ms_per_request", "{:.3f}"),
    ("engine CPU per request, ms", "engine_cpu_ms_per_request", "{:.3f}"),
    ("{streams}-stream burst: TTFT p50, ms", "ttft_p50_ms", "{:.1f}"),
    ("{streams}-stream burst: TTFT p99, ms", "ttft_p99_ms", "{:.1f}"),
    ("burst: gap between chunks p50, ms", "gap_p50_ms", "{:.2f}"),
    ("burst: gap between chunks p99, ms", "gap_p99_ms", "{:.2f}"),
    ("burst: chunks per stream", "chunks_per_stream", "{:.1f}"),
    ("burst: streams failed / lost / merged chunks", "stream_faults", "{}"),
    ("burst: chunks coalesced into one read, %", "coalesced_pct", "{:.1f}"),
    ("burst: neuron CPU per chunk, µs", "neuron_cpu_us_per_chunk", "{:.1f}"),
    ("burst: engine CPU per chunk, µs", "engine_cpu_us_per_chunk", "{:.1f}"),
    ("burst: listen-queue overflows (whole machine)", "listen_overflows", "{:.0f}"),
    ("neuron RSS with the model ready, MiB", "neuron_rss_ready_mib", "{:.1f}"),
    ("neuron RSS after its run, MiB", "neuron_rss_mib", "{:.1f}"),
]
NEURON_ONLY = {"ready_s", "neuron_rss_ready_mib", "neuron_rss_mib"}
"""Rows about the neuron itself, not about a target: shown in the neuron's column only."""
DELTAS: dict[str, tuple[str, str]] = {
    # key: (how, format) — "ratio": neuron / direct in %; "diff": neuron - direct
    "rps": ("ratio", "{:.0f}%"),
    "latency_p50_ms": ("diff", "{:+.2f}"),
    "latency_p99_ms": ("diff", "{:+.2f}"),
    "ttft_p50_ms": ("diff", "{:+.1f}"),
    "ttft_p99_ms": ("diff", "{:+.1f}"),
    "gap_p50_ms": ("diff", "{:+.2f}"),
    "gap_p99_ms": ("diff", "{:+.2f}"),
}


# ---------------------------------------------------------------- the fake engine


def engine_main(argv: list[str]) -> int:
    """The fake upstream, started by the neuron with vLLM's flags (which it ignores)."""
    parser = argparse.ArgumentParser(prog="neuron_proxy.py engine")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, help="pin this process to that CPU first")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--chunk-gap-ms", type=float, default=10.0)
    args, _ = parser.parse_known_args(argv)  # --model, --served-model-name, --host, ...
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    benchlib.run_upstream(args.port, args.chunks, args.chunk_gap_ms / 1000)
    return 0


# ---------------------------------------------------------------- the neuron


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def neuron_config(args: argparse.Namespace, port: int) -> str:
    lines = [
        'host = "127.0.0.1"',
        f"port = {port}",
        f"log_level = {toml_value(args.log_level)}",
        "drain_timeout = 10.0",
        "",
        "[harness.vllm]",
        "stop_timeout = 15.0",
    ]
    if args.real:
        lines += [
            f"python = {toml_value(sys.executable)}",
            "startup_timeout = 600.0",
            f"env = {toml_value(REAL_ENV)}",
        ]
        model = {
            "model_id": REAL_MODEL,
            "source": str(args.model_dir),
            "dtype": "float32",
            "max_model_len": 256,
            "engine_args": ["--enforce-eager"],
        }
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "engine"]
        command += ["--chunks", str(args.chunks), "--chunk-gap-ms", str(args.chunk_gap_ms)]
        if args.client_cpu is not None:
            command += ["--cpu", str(args.client_cpu)]
        lines += [f"command = {toml_value(command)}", "startup_timeout = 60.0"]
        model = {"model_id": benchlib.MODEL, "source": "bench-fake-engine"}
    lines += ["", "[[default_models]]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in model.items()]
    return "\n".join(lines) + "\n"


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
    return found


def pin_group(pgid: int, cpu: int) -> int:
    """Pin every thread of every process in group ``pgid`` to ``cpu``; returns threads pinned."""
    pinned = 0
    for pid in group_members(pgid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), {cpu})
                    pinned += 1
    return pinned


def guard_groups(neuron_pid: int) -> set[int]:
    """Process groups of the engines ``neuron_pid`` started, found by their guard's argv.

    Each engine runs as ``python -I .../neuron/engine/guard.py <neuron pid> -- ...`` leading
    its own group, so this finds them even after the neuron itself is gone.
    """
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-2]):
            if arg.endswith(b"/neuron/engine/guard.py") and argv[i + 1] == str(neuron_pid).encode():
                with contextlib.suppress(OSError):
                    found.add(os.getpgid(int(entry.name)))
                break
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Neuron:
    """A started ``neuron`` (its own session) and the engine of its one model."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    engine_pgid: int = 0
    engine_url: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> list[str]:
        """SIGTERM (it drains, then unloads its engine); SIGKILL whatever is left.

        Returns what had to be killed by force (nothing, normally).
        """
        forced: list[str] = []
        groups = guard_groups(self.proc.pid) | ({self.engine_pgid} if self.engine_pgid else set())
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                forced.append(f"neuron {self.proc.pid} ignored SIGTERM for 60 s")
        if self.proc.poll() is None or group_alive(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # it leads its own session
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        for pgid in groups | guard_groups(self.proc.pid):
            if group_alive(pgid):
                forced.append(f"engine process group {pgid} was still running")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        return forced


def start_neuron(args: argparse.Namespace, work: Path) -> Neuron:
    port = free_port()
    config = work / "neuron.toml"
    config.write_text(neuron_config(args, port))
    log = work / "neuron.log"
    exe = Path(sys.executable).with_name("neuron")
    if not exe.exists():
        raise SystemExit(f"{exe} not found: build .venv first (make test)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=benchlib.pin(args.neuron_cpu),
            start_new_session=True,
        )
    return Neuron(proc, f"http://127.0.0.1:{port}", log)


async def wait_model_ready(neuron: Neuron, model: str, limit_s: float) -> float:
    """Seconds until ``model`` is ready; fills in the engine's group and URL."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        if not neuron.alive():
            raise RuntimeError(f"the neuron exited:\n{neuron.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            health = await get_json(neuron.url + "/health")
            if health.get("status") == "ready":
                infos = {m["id"]: m for m in await get_json(neuron.url + "/models")}
                info = infos.get(model) or {}
                if info.get("status") != "ready":
                    raise RuntimeError(f"{model} is not ready: {info}\n{neuron.log_tail()}")
                neuron.engine_pgid = int(info["engine"]["pid"])
                neuron.engine_url = str(info["engine"]["url"])
                return time.monotonic() - began
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{model} not ready after {limit_s:.0f} s:\n{neuron.log_tail()}")


# ---------------------------------------------------------------- one round


def loads(args: argparse.Namespace) -> tuple[bytes, bytes, bytes]:
    """The non-streaming body, what a good answer contains, and the streaming body."""
    if args.real:
        extra = {"ignore_eos": True}
        return (
            chat_body(REAL_MODEL, max_tokens=args.max_tokens, **extra),
            b'"choices"',
            chat_body(REAL_MODEL, stream=True, max_tokens=args.chunks, **extra),
        )
    return chat_body(), b"hello", chat_body(stream=True)


async def measure(
    target: str, chat: str, neuron: Neuron, args: argparse.Namespace
) -> dict[str, Any]:
    body, expect, stream_body = loads(args)
    pid, engine = neuron.proc.pid, neuron.engine_pgid
    check = not args.real
    result: dict[str, Any] = {}
    # warm up: connections, caches, lazy imports
    if args.real:
        await benchlib.throughput(chat, 2.0, 2, body, expect)
        await benchlib.burst(chat, 2, args.chunks, stream_body, check)
    else:
        await benchlib.throughput(chat, 1.0, 4, body, expect)
        await benchlib.burst(chat, 10, args.chunks, stream_body, check)

    result["settle_s"] = await quiesce(pid, args.settle_limit)
    mine, theirs = cpu_seconds(pid, tree=False), cpu_seconds(engine)
    load = await benchlib.throughput(chat, args.seconds, args.concurrency, body, expect)
    mine, theirs = cpu_seconds(pid, tree=False) - mine, cpu_seconds(engine) - theirs
    answered = max(1, load["requests"])
    load["failed_requests"] = load["errors"] + load["bad_answers"]
    load["neuron_cpu_ms_per_request"] = 1000 * mine / answered
    load["engine_cpu_ms_per_request"] = 1000 * theirs / answered
    result |= load

    result["settle_s"] += await quiesce(pid, args.settle_limit)
    mine, theirs = cpu_seconds(pid, tree=False), cpu_seconds(engine)
    overflows = benchlib.listen_overflows()
    streams = await benchlib.burst(chat, args.streams, args.chunks, stream_body, check)
    mine, theirs = cpu_seconds(pid, tree=False) - mine, cpu_seconds(engine) - theirs
    chunks = max(1, streams["chunks_received"])
    streams["listen_overflows"] = benchlib.listen_overflows() - overflows
    streams["neuron_cpu_us_per_chunk"] = 1e6 * mine / chunks
    streams["engine_cpu_us_per_chunk"] = 1e6 * theirs / chunks
    streams["chunks_per_stream"] = streams["chunks_received"] / max(1, streams["streams"])
    judged = [streams["streams_lost_chunks"], streams["streams_merged_chunks"]]
    streams["stream_faults"] = " / ".join(
        str(n) for n in [streams["streams_failed"]] + ["n/a" if v is None else v for v in judged]
    )
    result |= streams
    result["neuron_rss_mib"] = rss_bytes(pid, tree=False) / MIB
    result["engine_rss_mib"] = rss_bytes(engine) / MIB
    return result


def affinity(pid: int) -> list[int]:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return []


async def run_round(
    round_no: int,
    neuron: Neuron,
    args: argparse.Namespace,
    out: TextIO | None,
    results: list[dict[str, Any]],
) -> None:
    """Measure both targets with ``neuron``; each result is appended as soon as it is done."""
    model = REAL_MODEL if args.real else benchlib.MODEL
    ready_s = await wait_model_ready(neuron, model, args.start_timeout)
    if args.client_cpu is not None:
        pin_group(neuron.engine_pgid, args.client_cpu)  # the guard too: off the neuron's CPU
    engine_pids = group_members(neuron.engine_pgid)
    setup = {
        "ready_s": ready_s,
        "neuron_rss_ready_mib": rss_bytes(neuron.proc.pid, tree=False) / MIB,
        "neuron_pid": neuron.proc.pid,
        "neuron_cpus": affinity(neuron.proc.pid),
        "engine_pids": engine_pids,
        "engine_cpus": sorted({c for p in engine_pids for c in affinity(p)}),
    }
    turn = (round_no - 1) % len(TARGETS)
    for target in TARGETS[turn:] + TARGETS[:turn]:
        base = neuron.engine_url if target == "direct" else neuron.url
        result: dict[str, Any] = {"round": round_no, "target": target, "mode": args.mode}
        result |= setup
        began = time.monotonic()
        try:
            result |= await measure(target, base + "/v1/chat/completions", neuron, args)
            if not neuron.alive():
                raise RuntimeError(f"the neuron died during the run:\n{neuron.log_tail()}")
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            print(f"# {target}, round {round_no} failed: {result['error']}", file=sys.stderr)
        result["wall_s"] = time.monotonic() - began
        results.append(result)
        line = json.dumps(result)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()


# ---------------------------------------------------------------- the report


def deltas(results: list[dict[str, Any]], key: str) -> list[float]:
    """Per round, what going through the neuron changed ``key`` by (see DELTAS)."""
    how = DELTAS[key][0]
    found = []
    for round_no in sorted({r["round"] for r in results}):
        pair = {
            r["target"]: r.get(key) for r in results if r["round"] == round_no and "error" not in r
        }
        direct, through = pair.get("direct"), pair.get("neuron")
        if not isinstance(direct, int | float) or not isinstance(through, int | float):
            continue
        if how == "ratio":
            if direct:
                found.append(100 * through / direct)
        else:
            found.append(through - direct)
    return found


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| | direct* | through the neuron | neuron vs direct (per round) |",
        "|---|---|---|---|",
    ]
    for label, key, fmt in ROWS:
        if key == "chunks_per_stream" and not args.real:
            continue
        label = label.format(concurrency=args.concurrency, streams=args.streams)
        cells = []
        for target in TARGETS:
            values = [r.get(key) for r in results if r["target"] == target and "error" not in r]
            if key in NEURON_ONLY and target == "direct":
                values = []
            cells.append(cell(values, fmt))
        cells.append(cell(deltas(results, key), DELTAS[key][1]) if key in DELTAS else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    failed = [sum(1 for r in results if r["target"] == t and "error" in r) for t in TARGETS]
    if any(failed):
        lines.append("| rounds that failed | " + " | ".join(map(str, failed)) + " | |")
    lines.append("")
    lines.append(
        "\\* direct: the same engine at its own URL; the neuron idles meanwhile, so its CPU "
        "rows there are its background (health sampling; --real: relaying the engine's log)."
    )
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> list[str]:
    cpu = benchlib.cpu_model()
    pinned = (
        f"neuron pinned to CPU {args.neuron_cpu}, engine + load on CPU {args.client_cpu}"
        if args.neuron_cpu is not None
        else "NOT pinned"
    )
    lines = [
        f"- machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; {pinned}",
        f"- neuron: {benchlib.revision('neuron')}, log_level {args.log_level}",
    ]
    if args.real:
        lines.append(
            f"- engine: vLLM (CPU) serving the tiny model ({REAL_LAYERS} layers, float32, "
            f"--enforce-eager, max_model_len 256), {args.model_dir}"
        )
        lines.append(
            f"- load: {args.rounds} rounds; {args.seconds:g} s @{args.concurrency} non-streaming, "
            f"max_tokens {args.max_tokens}; {args.streams} streams x {args.chunks} tokens "
            "(ignore_eos)"
        )
    else:
        lines.append("- engine: the fake upstream of bench/benchlib.py (aiohttp + uvloop)")
        lines.append(
            f"- load: {args.rounds} rounds; {args.seconds:g} s @{args.concurrency} non-streaming; "
            f"{args.streams} streams x {args.chunks} chunks, {args.chunk_gap_ms:g} ms apart"
        )
    return lines


# ---------------------------------------------------------------- main


def make_tiny_model(args: argparse.Namespace) -> None:
    print(f"# tiny model ({REAL_LAYERS} layers): {args.model_dir}", flush=True)
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_tiny_model.py"),
            str(args.model_dir),
            *("--layers", str(REAL_LAYERS)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--real", action="store_true", help="real vLLM (CPU) and the tiny model")
    parser.add_argument("--rounds", type=int, help="default: 3; --real: 1")
    parser.add_argument("--seconds", type=float, help="throughput run (default 10; --real: 15)")
    parser.add_argument("--concurrency", type=int, help="default 32; --real: 4")
    parser.add_argument("--streams", type=int, help="streams in the burst (200; --real: 8)")
    parser.add_argument("--chunks", type=int, help="chunks (--real: tokens) per stream (100; 64)")
    parser.add_argument("--chunk-gap-ms", type=float, default=10.0, help="fake engine only")
    parser.add_argument("--max-tokens", type=int, default=16, help="--real non-streaming")
    parser.add_argument("--log-level", default="info", help="the neuron's (default: its own)")
    parser.add_argument("--start-timeout", type=float, help="model ready within (60; 600 s)")
    parser.add_argument("--json", help="also append the JSON lines to this file")
    parser.add_argument("--no-pin", action="store_true", help="ceiling: do not pin to CPUs")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=gateways.cache_dir() / "models" / f"tiny-{REAL_LAYERS}",
        help="--real: where the tiny model is built (once)",
    )
    args = parser.parse_args(argv)
    real = args.real
    defaults = {
        "rounds": 1 if real else 3,
        "seconds": 15.0 if real else 10.0,
        "concurrency": 4 if real else 32,
        "streams": 8 if real else 200,
        "chunks": 64 if real else 100,
        "start_timeout": 600.0 if real else 60.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.mode = "real" if real else "ceiling"
    args.settle_limit = 15.0 if real else 30.0
    pinned = not real and not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    args.client_cpu = CLIENT_CPU if pinned else None
    args.neuron_cpu = NEURON_CPU if pinned else None
    return args


def stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def catch_signals() -> None:
    """Outside the event loop, SIGINT and SIGTERM raise KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it


def run_interruptible(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro``; SIGINT or SIGTERM cancels it (cleanly) and raises KeyboardInterrupt.

    A Python-level handler would raise in whatever callback the loop happens to run.
    """
    task = loop.create_task(coro)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        catch_signals()


def stop_neuron(neuron: Neuron) -> None:
    """Stop the neuron and its engine; a second Ctrl-C must not leave them running."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for complaint in neuron.stop():
            print(f"# clean-up: {complaint}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> int:
    if sys.argv[1:2] == ["engine"]:
        return engine_main(sys.argv[2:])
    args = parse_args()
    catch_signals()
    benchlib.raise_nofile()
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})

    began = time.monotonic()
    results: list[dict[str, Any]] = []
    out = benchlib.results_file(args.json)
    loop = benchlib.new_loop()
    interrupted = False
    try:
        if args.real:
            make_tiny_model(args)
        for round_no in range(1, args.rounds + 1):
            work = Path(tempfile.mkdtemp(prefix="neuron-proxy-"))
            neuron: Neuron | None = None
            try:
                neuron = start_neuron(args, work)
                run_interruptible(loop, run_round(round_no, neuron, args, out, results))
            except Exception as exc:
                for target in TARGETS:
                    results.append(
                        {"round": round_no, "target": target, "error": f"{type(exc).__name__}"}
                    )
                first = (str(exc).splitlines() or [""])[0]
                print(f"# round {round_no} failed: {first}", file=sys.stderr, flush=True)
            finally:
                if neuron is not None:
                    stop_neuron(neuron)
                    if any("error" in r for r in results if r["round"] == round_no):
                        print(f"# neuron log, last lines:\n{neuron.log_tail()}", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    except KeyboardInterrupt:
        interrupted = True
        print("# interrupted; the neuron and its engine are stopped", file=sys.stderr)
    finally:
        loop.close()
        if out:
            out.close()
    took = time.monotonic() - began
    print()
    for line in describe(args):
        print(line)
    print(f"- took {took / 60:.1f} min")
    print()
    print(table(results, args))
    if interrupted:
        return 130
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
