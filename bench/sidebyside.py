"""cortex side by side with LiteLLM and vllm-router, and against going direct.

Usage: .venv/bin/python bench/sidebyside.py [--targets direct,cortex,litellm,vllm-router]
           [--rounds 3] [--seconds 10] [--concurrency 32] [--streams 200] [--chunks 100]
           [--chunk-gap-ms 10] [--held 5000] [--json results.jsonl] [--profile DIR]

The same load runs against each target: straight at the fake upstream (direct), and through
cortex, the LiteLLM proxy and vllm-router, each alone on CPU 1 with one worker, in front of
the same fake OpenAI upstream (bench/benchlib.py) on CPU 0, with the load generator (this
process) on CPU 0. LiteLLM and vllm-router are installed from PyPI into venvs of their own
under ~/.cache/cortex-bench/venvs on first use. Each target gets a fresh gateway and a fresh
upstream; rounds run the targets in rotated order. Per target and round:

- held streams: --held idle streams held open at once; the gateway's RSS growth per stream,
  and whether the gateway closes its upstream streams once the clients have gone;
- throughput: --concurrency workers send non-streaming chats for --seconds: requests/s,
  latency p50/p99, gateway CPU time per request (user + system of the gateway's process
  tree, from /proc);
- burst: --streams streams start together, each --chunks chunks --chunk-gap-ms apart:
  time to first chunk and the gap between chunks, p50/p99, gateway CPU per chunk, and a
  check of every event: each stream must receive exactly its chunks, one parseable event
  each, in order;
- the gateway's RSS at the end.

For direct, the CPU and memory columns are those of the fake upstream itself: the floor an
aiohttp server pays. Prints one JSON line per target and round, then a markdown table of
medians with the min-max spread.
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import benchlib
import gateways
from benchlib import cell, chat_body, cpu_seconds, free_port, get_json, pin, quiesce, rss_bytes

HERE = Path(__file__).resolve().parent
CLIENT_CPU, GATEWAY_CPU = 0, 1
MIB = 1024 * 1024
CLOSE_WITHIN_S = 15.0
"""How long a gateway gets to close its upstream streams after its clients closed theirs."""
PROFILED = ("cortex", "litellm")
"""The gateways written in Python: --profile records these."""

ROWS: list[tuple[str, str, str]] = [
    ("start-up to first answer, s", "startup_s", "{:.1f}"),
    ("requests/s @{concurrency}", "rps", "{:,.0f}"),
    ("latency p50, ms", "latency_p50_ms", "{:.1f}"),
    ("latency p99, ms", "latency_p99_ms", "{:.1f}"),
    ("gateway CPU per request, ms", "cpu_ms_per_request", "{:.3f}"),
    ("failed requests (errors + bad answers)", "failed_requests", "{:.0f}"),
    ("{streams}-stream burst: TTFT p50, ms", "ttft_p50_ms", "{:.0f}"),
    ("{streams}-stream burst: TTFT p99, ms", "ttft_p99_ms", "{:.0f}"),
    ("burst: gap between chunks p50, ms", "gap_p50_ms", "{:.1f}"),
    ("burst: gap between chunks p99, ms", "gap_p99_ms", "{:.1f}"),
    ("burst: gateway CPU per chunk, µs", "cpu_us_per_chunk", "{:.0f}"),
    ("burst: streams failed / lost / merged chunks", "stream_faults", "{}"),
    ("burst: listen-queue overflows (whole machine)", "listen_overflows", "{:.0f}"),
    ("burst: chunks coalesced into one read, %", "coalesced_pct", "{:.1f}"),
    ("{held} held streams: held open", "held", "{:.0f}"),
    ("held streams: RSS per stream, KiB", "held_kib_per_stream", "{:.1f}"),
    ("held streams: all closed upstream after, s", "held_close_s", "{:.1f}"),
    (
        f"held streams: upstream streams still open {CLOSE_WITHIN_S:.0f} s after",
        "upstream_left_open",
        "{:.0f}",
    ),
    ("gateway RSS after the run, MiB", "rss_after_mib", "{:.0f}"),
]


# ---------------------------------------------------------------- one target, one round


async def wait_ready(running: gateways.Running, limit_s: float) -> float:
    """Seconds until the target answers a chat; raises if it dies or never answers."""
    began = time.monotonic()
    body = chat_body()
    async with benchlib.session(timeout=5.0) as client:
        while time.monotonic() - began < limit_s:
            if not running.alive():
                raise RuntimeError(f"{running.name} exited:\n{running.log_tail()}")
            try:
                async with client.post(running.chat, data=body, headers=benchlib.HEADERS) as r:
                    if r.status == 200 and b"hello" in await r.read():
                        return time.monotonic() - began
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{running.name} never answered in {limit_s:.0f} s:\n{running.log_tail()}")


async def upstream_open_streams(upstream: str, within_s: float) -> tuple[int, float]:
    """Streams the fake upstream still serves after up to ``within_s``, and the time taken."""
    began = time.monotonic()
    while True:
        count = int((await get_json(upstream + "/bench/stats"))["open_streams"])
        took = time.monotonic() - began
        if count == 0 or took > within_s:
            return count, took
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def profiling(pid: int, label: str, args: argparse.Namespace) -> AsyncIterator[None]:
    """With --profile, py-spy records ``pid`` (and its children) for the block's duration.

    py-spy runs on the load generator's CPU and samples without stopping the gateway
    (``--nonblocking``); it writes collapsed stacks (``--format raw``), which speedscope and
    flamegraph tools read and bench/pyspy_top.py summarises.
    """
    if not args.profile or label.split("-r")[0] not in PROFILED:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    out = Path(args.profile) / f"{label}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(spy if spy.exists() else "py-spy"), "record", "--pid", str(pid)]
    argv += ["--rate", str(args.profile_rate), "--format", "raw", "--subprocesses"]
    argv += [] if args.profile_lines else ["--nolineno"]
    argv += ["--nonblocking", "--output", str(out)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin(args.client_cpu)
    )
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"# profile of {label}: {out}", flush=True)


async def run_one(name: str, round_no: int, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"sidebyside-{name}-"))
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    upstream_proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "benchlib.py"),
            *("--port", str(port), "--chunks", str(args.chunks)),
            *("--chunk-gap-ms", str(args.chunk_gap_ms)),
        ],
        preexec_fn=pin(args.client_cpu),
        start_new_session=True,
    )
    running = gateways.Running(name, upstream)
    result: dict[str, Any] = {"round": round_no, "target": name}
    try:
        await wait_ready(gateways.Running("upstream", upstream, upstream_proc), 30)
        running = gateways.start(
            name, upstream, work, args.gateway_cpu, args.cache_dir, neurons=args.neurons
        )
        result["startup_s"] = await wait_ready(running, args.start_timeout)
        pid = running.proc.pid if running.proc else upstream_proc.pid
        # warm up: connections, caches, lazy imports
        await benchlib.throughput(running.chat, 1.0, 4)
        await benchlib.burst(running.chat, 10, args.chunks)

        if args.held:
            before = rss_bytes(pid)

            async def measure() -> dict[str, Any]:
                return {"held_rss_mib": rss_bytes(pid) / MIB}

            held = await benchlib.hold(running.chat, args.held, measure)
            grown = held["held_rss_mib"] * MIB - before
            held["held_kib_per_stream"] = grown / 1024 / held["held"] if held["held"] else None
            left, took = await upstream_open_streams(upstream, CLOSE_WITHIN_S)
            held["upstream_left_open"] = left
            held["held_close_s"] = None if left else took
            if left:  # end them, so that the next tests start clean
                await get_json(upstream + "/bench/release", "POST")
                await upstream_open_streams(upstream, CLOSE_WITHIN_S)
            held["held_settle_s"] = await quiesce(pid)
            result |= held

        result["settle_s"] = await quiesce(pid)
        used = cpu_seconds(pid)
        async with profiling(pid, f"{name}-r{round_no}-throughput", args):
            load = await benchlib.throughput(running.chat, args.seconds, args.concurrency)
        used = cpu_seconds(pid) - used
        load["failed_requests"] = load["errors"] + load["bad_answers"]
        load["cpu_ms_per_request"] = 1000 * used / max(1, load["requests"])
        result |= load

        result["settle_s"] += await quiesce(pid)
        used, overflows = cpu_seconds(pid), benchlib.listen_overflows()
        async with profiling(pid, f"{name}-r{round_no}-burst", args):
            streams = await benchlib.burst(running.chat, args.streams, args.chunks)
        used = cpu_seconds(pid) - used
        streams["listen_overflows"] = benchlib.listen_overflows() - overflows
        streams["cpu_us_per_chunk"] = 1e6 * used / max(1, streams["chunks_received"])
        streams["stream_faults"] = "{} / {} / {}".format(
            streams["streams_failed"],
            streams["streams_lost_chunks"],
            streams["streams_merged_chunks"],
        )
        result |= streams
        result["rss_after_mib"] = rss_bytes(pid) / MIB
        if not running.alive():
            raise RuntimeError(f"{name} died during the run:\n{running.log_tail()}")
    except Exception as exc:  # one broken target must not sink the others
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"# {name} failed: {result['error']}", file=sys.stderr, flush=True)
    finally:
        running.stop()
        os.killpg(upstream_proc.pid, signal.SIGINT)
        try:
            upstream_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(upstream_proc.pid, signal.SIGKILL)
        if "error" in result and running.log:
            result["log_tail"] = running.log_tail()
        shutil.rmtree(work, ignore_errors=True)
    return result


# ---------------------------------------------------------------- the report


def table(results: list[dict[str, Any]], names: list[str], args: argparse.Namespace) -> str:
    heads = [f"{n}*" if n == "direct" else n for n in names]
    lines = ["| | " + " | ".join(heads) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, fmt in ROWS:
        if key.startswith("held") or key == "upstream_left_open":
            if not args.held:
                continue
        label = label.format(concurrency=args.concurrency, streams=args.streams, held=args.held)
        cells = [
            cell([r.get(key) for r in results if r["target"] == n and "error" not in r], fmt)
            for n in names
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    failed = [n for n in names if any(r["target"] == n and "error" in r for r in results)]
    if failed:
        row = [str(sum(1 for r in results if r["target"] == n and "error" in r)) for n in names]
        lines.append("| rounds that failed | " + " | ".join(row) + " |")
    if "direct" in names:
        lines.append("")
        lines.append("\\* direct: CPU and memory rows are the fake upstream's own (aiohttp).")
    return "\n".join(lines)


def describe(args: argparse.Namespace, names: list[str]) -> list[str]:
    cpu = benchlib.cpu_model()
    lines = [
        f"- machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"gateway pinned to CPU {args.gateway_cpu}, upstream + load on CPU {args.client_cpu}"
        if args.gateway_cpu is not None
        else f"- machine: {os.cpu_count()} CPUs ({cpu}); NOT pinned",
        f"- cortex: {benchlib.revision('cortex')}"
        + (f", given the upstream as {args.neurons} neurons" if args.neurons > 1 else ""),
    ]
    if "litellm" in names:
        lines.append(f"- LiteLLM: {gateways.LITELLM}")
    if "vllm-router" in names:
        lines.append(f"- vllm-router: {gateways.VLLM_ROUTER}")
    lines.append(
        f"- load: {args.rounds} rounds, {args.seconds:g} s @{args.concurrency} non-streaming; "
        f"{args.streams} streams x {args.chunks} chunks, {args.chunk_gap_ms:g} ms apart; "
        f"{args.held} held streams"
    )
    return lines


# ---------------------------------------------------------------- main


async def main_async(
    args: argparse.Namespace, names: list[str], out: TextIO | None
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        turn = (round_no - 1) % len(names)
        for name in names[turn:] + names[:turn]:
            began = time.monotonic()
            result = await run_one(name, round_no, args)
            result["wall_s"] = time.monotonic() - began
            results.append(result)
            line = json.dumps({k: v for k, v in result.items() if k != "log_tail"})
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--targets", default=",".join(gateways.NAMES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput run length")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--streams", type=int, default=200, help="streams in the burst")
    parser.add_argument("--chunks", type=int, default=100, help="chunks per burst stream")
    parser.add_argument("--chunk-gap-ms", type=float, default=10.0)
    parser.add_argument("--held", type=int, default=5000, help="idle streams held (0: skip)")
    parser.add_argument(
        "--neurons", type=int, default=1, help="cortex: list the upstream as this many neurons"
    )
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--json", help="also append the JSON lines to this file")
    parser.add_argument("--cache-dir", type=Path, default=gateways.cache_dir())
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs 0 and 1")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy record the gateway during throughput and burst, into DIR (Python only)",
    )
    parser.add_argument("--profile-rate", type=int, default=250)
    parser.add_argument(
        "--profile-lines",
        action="store_true",
        help="keep line numbers in the profile (one frame per line, not per function)",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(gateways.NAMES))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(gateways.NAMES)}")

    # Files: the load generator holds one socket per held stream; a gateway two.
    limit = benchlib.raise_nofile()
    if 2 * args.held + 512 > limit:
        args.held = max(0, (limit - 512) // 2)
        print(f"# open-file limit {limit}: holding only {args.held} streams", file=sys.stderr)
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    args.client_cpu = CLIENT_CPU if pinned else None
    args.gateway_cpu = GATEWAY_CPU if pinned else None
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CPU})
    gateways.prepare(names, args.cache_dir)

    # The gateways and upstreams run in sessions of their own, so a SIGTERM (timeout, pkill)
    # that killed only this script left them running. Clean up as Ctrl-C does instead.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    began = time.monotonic()
    loop = benchlib.new_loop()
    out = benchlib.results_file(args.json)
    try:
        results = loop.run_until_complete(main_async(args, names, out))
    finally:
        loop.close()
        if out:
            out.close()
    took = time.monotonic() - began
    print()
    for line in describe(args, names):
        print(line)
    print(f"- took {took / 60:.1f} min")
    print()
    print(table(results, names, args))
    for result in results:
        if "error" in result:
            print(f"\n## {result['target']}, round {result['round']}: {result['error']}")
            if result.get("log_tail"):
                print(result["log_tail"])
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
