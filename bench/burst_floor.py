"""How close to direct can any Python relay on one core get in a 200-stream burst?

Usage: .venv/bin/python bench/burst_floor.py [--targets tcp,relay,relay-warm,cortex,...]
           [--bursts 8] [--streams 200] [--chunks 100] [--json FILE] [--cache-dir DIR]

The issue's burst goal for cortex is time to first token p99 within 10% of going direct.
This measures the floor under it: the same burst as bench/sidebyside.py, through relays that
do as little as a relay can, each alone on CPU 1 on uvloop, next to cortex:

- ``tcp``: a blind TCP proxy. Each client connection gets its own new upstream connection;
  bytes are copied both ways and nothing is parsed.
- ``relay``: a minimal HTTP/1.1 relay. httptools parses the request (to find its end) and
  the answer (to find its end), the answer's bytes go back as they arrive, and upstream
  connections are kept alive in a pool. No routing, no JSON, no metrics, no timeouts, no
  headers forwarded: a floor, not a gateway.
- ``cortex``: ``cortex serve``, set up as in sidebyside.py.
- ``vllm-router``: the Rust router, set up as in sidebyside.py (installed on first use).

Each burst gets a fresh relay (or cortex) that is warmed as sidebyside.py leaves it before its
burst: non-streaming requests at 32 concurrent (0.5 s, then 2 s that are measured: requests/s
and CPU per request, the floor under sidebyside.py's throughput row), so 32 upstream
connections are warm and the burst's other 168 streams need new ones. The ``-warm`` variants
also get a burst of ``--streams`` 2-chunk streams first, so every upstream connection the burst
needs is open already. The ``-named`` variants (``cortex-named``, ``vllm-router-named``) are
given the upstream as ``localhost`` (from /etc/hosts), not ``127.0.0.1``, as a fleet names its
hosts: what looking the name up costs while the burst opens its connections. Right before each
burst through a target, the same burst goes direct to the same upstream: the ratio of the two
p99s is taken per pair, and its median reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchlib
import gateways
from benchlib import cpu_seconds, free_port, pin, quiesce
from sidebyside import wait_ready

HERE = Path(__file__).resolve().parent
CLIENT_CPU, GATEWAY_CPU = 0, 1
WARM = 32
"""Upstream connections open before the burst: what sidebyside.py's throughput run leaves."""


# ---------------------------------------------------------------- the floors, run as `serve`


class _TcpDown(asyncio.Protocol):
    """One client connection of the blind TCP proxy."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.up, _ = await loop.create_connection(lambda: _TcpUp(self), *self.upstream)
        for data in self.early:
            self.up.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


class _TcpUp(asyncio.Protocol):
    def __init__(self, down: _TcpDown) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        assert self.down.transport is not None  # noqa: S101
        self.down.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.down.transport is not None:
            self.down.transport.close()


class _Relay:
    """The minimal HTTP relay's shared state: the upstream address and its idle connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.idle: list[_RelayUp] = []


class _RelayDown(asyncio.Protocol):
    """One client connection of the minimal HTTP relay: one request at a time."""

    def __init__(self, relay: _Relay) -> None:
        import httptools

        self.relay = relay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        self.body = []
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        if self.relay.idle:
            self.relay.idle.pop().send(self, request)
        else:
            asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: _RelayUp(self.relay), *self.relay.upstream)
        up.send(self, request)


class _RelayUp(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        import httptools

        self.relay = relay
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.down: _RelayDown | None = None
        self.complete = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, down: _RelayDown, request: bytes) -> None:
        assert self.transport is not None  # noqa: S101
        self.down, self.complete = down, False
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.down is not None and self.down.transport is not None:
            self.down.transport.write(data)
        if self.complete:  # the whole answer has gone back: the connection is free again
            self.down = None
            self.relay.idle.append(self)

    def on_message_complete(self) -> None:
        self.complete = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.relay.idle:
            self.relay.idle.remove(self)
        if self.down is not None and self.down.transport is not None:
            self.down.transport.close()


def serve(kind: str, port: int, upstream_port: int) -> None:
    import uvloop

    upstream = ("127.0.0.1", upstream_port)
    relay = _Relay(upstream)

    def protocol() -> asyncio.Protocol:
        return _TcpDown(upstream) if kind == "tcp" else _RelayDown(relay)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    benchlib.raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):  # how the measurement stops it
        uvloop.run(main())


# ---------------------------------------------------------------- the measurement


TARGETS = "tcp,relay,relay-warm,vllm-router,cortex,cortex-warm"


def _kind(target: str) -> str:
    return target.removesuffix("-warm").removesuffix("-named")


def start(
    target: str, upstream: str, upstream_port: int, work: Path, args: argparse.Namespace
) -> gateways.Running:
    kind = _kind(target)
    if target.endswith("-named"):  # the gateway is given the upstream by host name
        upstream = upstream.replace("127.0.0.1", "localhost")
    if kind in ("cortex", "vllm-router"):
        return gateways.start(kind, upstream, work, GATEWAY_CPU, args.cache_dir)
    if target.endswith("-named"):
        raise SystemExit(f"{target}: only cortex and vllm-router take a -named variant")
    port = free_port()
    argv = [sys.executable, str(Path(__file__)), "serve", kind, str(port), str(upstream_port)]
    proc = subprocess.Popen(argv, preexec_fn=pin(GATEWAY_CPU), start_new_session=True)
    return gateways.Running(target, f"http://127.0.0.1:{port}", proc)


async def pair(target: str, upstream: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """One burst direct, then the same burst through a fresh, warmed ``target``."""
    work = Path(tempfile.mkdtemp(prefix=f"burst-floor-{target}-"))
    running = start(target, upstream, port, work, args)
    try:
        await wait_ready(running, 60)
        assert running.proc is not None  # noqa: S101
        pid = running.proc.pid
        await benchlib.throughput(running.chat, 0.5, WARM)
        used = cpu_seconds(pid)
        load = await benchlib.throughput(running.chat, 2.0, WARM)
        used = cpu_seconds(pid) - used
        if target.endswith("-warm"):
            await benchlib.burst(running.chat, args.streams, 2)
        await quiesce(pid, 30)
        direct = await benchlib.burst(upstream + "/v1/chat/completions", args.streams, args.chunks)
        await quiesce(pid, 30)
        streamed = cpu_seconds(pid)
        through = await benchlib.burst(running.chat, args.streams, args.chunks)
        streamed = cpu_seconds(pid) - streamed
    finally:
        running.stop()
        shutil.rmtree(work, ignore_errors=True)
    faults = sum(
        through[k] or 0 for k in ("streams_failed", "streams_lost_chunks", "streams_merged_chunks")
    )
    return {
        "target": target,
        "direct_ttft_p50_ms": direct["ttft_p50_ms"],
        "direct_ttft_p99_ms": direct["ttft_p99_ms"],
        "ttft_p50_ms": through["ttft_p50_ms"],
        "ttft_p99_ms": through["ttft_p99_ms"],
        "p99_vs_direct_pct": 100 * (through["ttft_p99_ms"] / direct["ttft_p99_ms"] - 1),
        "gap_p99_ms": through["gap_p99_ms"],
        "rps": load["rps"],
        "cpu_ms_per_request": 1000 * used / max(1, load["requests"]),
        "failed_requests": load["errors"] + load["bad_answers"],
        "cpu_us_per_chunk": 1e6 * streamed / max(1, through["chunks_received"]),
        "stream_faults": faults,
    }


async def main_async(args: argparse.Namespace) -> int:
    benchlib.raise_nofile()
    os.sched_setaffinity(0, {CLIENT_CPU})
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(HERE / "benchlib.py"), "--port", str(port)]
    argv += ["--chunks", str(args.chunks), "--chunk-gap-ms", "10"]
    upstream_proc = subprocess.Popen(argv, preexec_fn=pin(CLIENT_CPU), start_new_session=True)
    out = benchlib.results_file(args.json)
    results: list[dict[str, Any]] = []
    targets = args.targets.split(",")
    try:
        await wait_ready(gateways.Running("upstream", upstream, upstream_proc), 30)
        for round_no in range(1, args.bursts + 1):
            for target in targets[round_no % len(targets) :] + targets[: round_no % len(targets)]:
                result = {"round": round_no, **await pair(target, upstream, port, args)}
                results.append(result)
                line = json.dumps(result)
                print(line, flush=True)
                if out is not None:
                    out.write(line + "\n")
                    out.flush()
    finally:
        upstream_proc.terminate()
        upstream_proc.wait()
        if out is not None:
            out.close()
    print()
    print(f"- {args.bursts} bursts per target of {args.streams} streams x {args.chunks} chunks")
    print(f"- machine: {os.cpu_count()} CPUs ({benchlib.cpu_model()})")
    print(f"- cortex {benchlib.revision('cortex')}")
    print()
    print(table(results, targets))
    return 0


def table(results: list[dict[str, Any]], targets: list[str]) -> str:
    """Medians over the pairs, and the best (lowest) of each column, since direct's own p99
    moves by tens of percent from one burst to the next on a busy 2-core machine."""
    lines = [
        "| target | TTFT p99 direct, ms | TTFT p99 through, ms | through vs direct "
        "| TTFT p50 through, ms | CPU per chunk, µs | faults "
        "| req/s @32 | CPU per request, ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        rows = [r for r in results if r["target"] == target]
        if not rows:
            continue
        direct = [r["direct_ttft_p99_ms"] for r in rows]
        through = [r["ttft_p99_ms"] for r in rows]
        medians = 100 * (statistics.median(through) / statistics.median(direct) - 1)
        bests = 100 * (min(through) / min(direct) - 1)
        p50 = statistics.median(r["ttft_p50_ms"] for r in rows)
        cpu = statistics.median(r["cpu_us_per_chunk"] for r in rows)
        lines.append(
            f"| {target} | {statistics.median(direct):.0f} (best {min(direct):.0f}) "
            f"| {statistics.median(through):.0f} (best {min(through):.0f}) "
            f"| {medians:+.0f}% (best: {bests:+.0f}%) | {p50:.0f} | {cpu:.0f} "
            f"| {sum(r['stream_faults'] + r['failed_requests'] for r in rows)} "
            f"| {statistics.median(r['rps'] for r in rows):,.0f} "
            f"| {statistics.median(r['cpu_ms_per_request'] for r in rows):.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=TARGETS)
    parser.add_argument("--bursts", type=int, default=8, help="bursts per target")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--json", help="also append the JSON lines to this file")
    parser.add_argument("--cache-dir", type=Path, default=gateways.cache_dir())
    args = parser.parse_args()
    gateways.prepare([_kind(t) for t in args.targets.split(",")], args.cache_dir)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
