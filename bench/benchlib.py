"""Shared pieces of the side-by-side gateway benchmark (bench/sidebyside.py).

- A fast fake upstream (aiohttp): an OpenAI server (``/v1/chat/completions``, streaming or
  not, and ``/v1/models``) that also answers the neuron read endpoints (``/models``,
  ``/health``, ``/discovery``), so cortex can poll it as a neuron and LiteLLM and
  vllm-router can use it as an OpenAI / vLLM worker. Run it with
  ``python bench/benchlib.py --port P [--chunks N] [--chunk-gap-ms G]``.
- Process accounting from /proc: CPU time and RSS of a process and all its descendants.
- Load generators: closed-loop non-streaming throughput with latencies, a burst of streams
  started together with a strict check of every SSE event, and N held (idle) streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MODEL = "m"
HOLD_MODEL = "hold"
"""A stream for this model sends one chunk, then stays open and silent until the client goes."""

API_KEY = "sk-bench-5d0c8e2f9a7b4c61e3f0a9d8c7b6a5f4"
"""Sent to every target; LiteLLM's master key (it refuses to start without one)."""
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def content_of(index: int) -> str:
    """The text of chunk ``index``: unique, so a lost, repeated or merged chunk shows."""
    return f"c{index};"


# ---------------------------------------------------------------- the fake upstream


def json_bodies(created: int) -> dict[tuple[str, str], Any]:
    """The fake upstream's JSON answers by ``(method, path)``: the non-streaming chat answer
    and the neuron and OpenAI read endpoints (``saturate.py``'s upstream sends the same)."""
    models = [MODEL, HOLD_MODEL]
    return {
        ("POST", "/v1/chat/completions"): {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        },
        ("GET", "/health"): {"status": "ready", "devices": []},
        ("GET", "/models"): [
            {"id": m, "harness": "vllm", "status": "ready", "in_flight": 0} for m in models
        ],
        ("GET", "/discovery"): {"hostname": "fake", "devices": []},
        ("GET", "/v1/models"): {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "bench"}
                for m in models
            ],
        },
    }


def upstream_app(chunks: int, gap: float) -> web.Application:
    """An OpenAI + neuron-contract server whose answers cost as little as possible."""
    created = int(time.time())
    stats = {"requests": 0, "streams": 0, "open_streams": 0}
    release = [asyncio.Event()]
    models = [MODEL, HOLD_MODEL]
    bodies = json_bodies(created)
    answer = json.dumps(bodies["POST", "/v1/chat/completions"]).encode()

    def event(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def events(model: str) -> tuple[list[bytes], bytes, bytes]:
        body = [event(model, {"role": "assistant", "content": content_of(0)})]
        body += [event(model, {"content": content_of(i)}) for i in range(1, chunks)]
        usage = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": chunks + 5},
        }
        return body, event(model, {}, "stop"), b"data: " + json.dumps(usage).encode() + b"\n\n"

    prepared = {m: events(m) for m in models}

    def reader(path: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def read(request: web.Request) -> web.Response:
            return web.json_response(bodies["GET", path])

        return read

    async def bench_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def bench_release(request: web.Request) -> web.Response:
        """End every held stream (normally, with a finish chunk and ``[DONE]``)."""
        release[0].set()
        release[0] = asyncio.Event()
        return web.json_response(stats)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        stats["requests"] += 1
        if not body.get("stream"):
            return web.Response(body=answer, content_type="application/json")
        model = body.get("model")
        model = model if model in prepared else MODEL
        content, finish, usage = prepared[model]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        stats["streams"] += 1
        stats["open_streams"] += 1
        try:
            if model == HOLD_MODEL:
                await response.write(content[0])
                # Until the client goes (handler cancellation) or /bench/release.
                await release[0].wait()
            else:
                for part in content:
                    await response.write(part)
                    await asyncio.sleep(gap)
            await response.write(finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(usage)
            await response.write(b"data: [DONE]\n\n")
        except ConnectionResetError:  # the gateway went away first: not ours to report
            pass
        finally:
            stats["open_streams"] -= 1
        return response

    app = web.Application()
    for method, path in bodies:
        if method == "GET":
            app.router.add_get(path, reader(path))
    app.router.add_get("/bench/stats", bench_stats)
    app.router.add_post("/bench/release", bench_release)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_upstream(port: int, chunks: int, gap: float) -> None:
    raise_nofile()
    web.run_app(
        upstream_app(chunks, gap),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        backlog=4096,
        handler_cancellation=True,
        loop=new_loop(),
    )


# ---------------------------------------------------------------- processes


def raise_nofile() -> int:
    """Raise this process's soft limit on open files to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU time of ``pid`` and its live descendants (all threads).

    ``tree=False``: of ``pid`` alone (all its threads, none of its children).
    """
    total = 0
    for each in descendants(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_bytes(pid: int, tree: bool = True) -> int:
    """Resident memory of ``pid`` and its live descendants (``tree=False``: ``pid`` alone)."""
    total = 0
    for each in descendants(pid) if tree else [pid]:
        try:
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets).

    A server whose accept backlog is too short for a burst of new connections makes the
    client's SYN wait for its retransmit, a full second later.
    """
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def pin(cpu: int | set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpu``, one core or a set (``None``: no
    pinning). Its children inherit the affinity."""
    if cpu is None:
        return None
    cpus = {cpu} if isinstance(cpu, int) else set(cpu)

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


# ---------------------------------------------------------------- load generation


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def chat_body(
    model: str = MODEL, stream: bool = False, max_tokens: int = 16, **extra: Any
) -> bytes:
    """A chat request; ``extra`` goes into the body as is (``ignore_eos=True`` for vLLM)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        **extra,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def session(timeout: float = 300.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def throughput(
    url: str,
    seconds: float,
    concurrency: int,
    body: bytes | None = None,
    expect: bytes = b"hello",
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers send non-streaming chats for ``seconds``.

    An answer counts when it is a 200 that contains ``expect`` (the fake upstream's text).
    """
    body = chat_body() if body is None else body
    latencies: list[float] = []
    bad = errors = 0
    deadline = time.monotonic() + seconds
    async with session(timeout=30.0) as client:

        async def worker() -> None:
            nonlocal bad, errors
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    async with client.post(url, data=body, headers=HEADERS) as response:
                        data = await response.read()
                        good = response.status == 200 and expect in data
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                if good:
                    latencies.append(time.perf_counter() - began)
                else:
                    bad += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    return {
        "requests": len(latencies),
        "bad_answers": bad,
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "latency_p50_ms": 1000 * quantile(latencies, 0.5),
        "latency_p99_ms": 1000 * quantile(latencies, 0.99),
    }


@dataclass
class StreamRead:
    """What one client saw of one stream."""

    status: int = 0
    contents: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    unparseable: int = 0
    coalesced: int = 0
    """Content events that arrived in the same read as the one before them."""
    done: bool = False
    error: str | None = None


class SSEParser:
    """Incremental SSE parser: ``feed`` returns the data payloads of complete events."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer = (self._buffer + data).replace(b"\r\n", b"\n")
        payloads = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            lines = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if lines:
                payloads.append(b"\n".join(lines))
        return payloads


def delta_content(payload: bytes) -> str | None:
    event = json.loads(payload)
    choices = event.get("choices") or []
    if not choices:
        return None
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) and content else None


async def read_stream(response: aiohttp.ClientResponse, seen: StreamRead, first_only: bool) -> None:
    parser = SSEParser()
    seen.status = response.status
    async for data in response.content.iter_any():
        now = time.perf_counter()
        in_this_read = 0
        for payload in parser.feed(data):
            if payload == b"[DONE]":
                seen.done = True
                continue
            try:
                content = delta_content(payload)
            except (ValueError, AttributeError, TypeError):
                seen.unparseable += 1
                continue
            if content is None:
                continue
            seen.contents.append(content)
            seen.times.append(now)
            in_this_read += 1
        seen.coalesced += max(0, in_this_read - 1)
        if first_only and seen.contents:
            return


async def burst(
    url: str, streams: int, chunks: int, body: bytes | None = None, check: bool = True
) -> dict[str, Any]:
    """``streams`` streams start together; every SSE event of every stream is checked.

    ``check=False`` (a real engine, whose text is not known in advance): the contents are not
    compared, so lost and merged chunks are not judged (``None``).
    """
    body = chat_body(stream=True) if body is None else body
    expected = [content_of(i) for i in range(chunks)]
    seen = [StreamRead() for _ in range(streams)]
    starts = [0.0] * streams
    async with session() as client:
        go = asyncio.Event()

        async def one(index: int) -> None:
            await go.wait()
            starts[index] = time.perf_counter()
            try:
                async with client.post(url, data=body, headers=HEADERS) as response:
                    await read_stream(response, seen[index], first_only=False)
            except (aiohttp.ClientError, TimeoutError) as exc:
                seen[index].error = type(exc).__name__

        tasks = [asyncio.create_task(one(i)) for i in range(streams)]
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    ttft: list[float] = []
    gaps: list[float] = []
    lost = merged = failed = unparseable = coalesced = 0
    for start, read in zip(starts, seen, strict=True):
        unparseable += read.unparseable
        coalesced += read.coalesced
        if read.error or read.status != 200 or not read.done:
            failed += 1
        if check and read.contents != expected:
            joined = "".join(read.contents) == "".join(expected)
            if joined:
                merged += 1  # all the text came, but not one event per chunk
            else:
                lost += 1
        if read.times:
            ttft.append(read.times[0] - start)
            gaps.extend(b - a for a, b in zip(read.times, read.times[1:], strict=False))
    received = sum(len(r.contents) for r in seen)
    return {
        "streams": streams,
        "chunks_received": received,
        "streams_failed": failed,
        "streams_lost_chunks": lost if check else None,
        "streams_merged_chunks": merged if check else None,
        "unparseable_events": unparseable,
        "coalesced_pct": 100 * coalesced / max(1, received),
        "ttft_p50_ms": 1000 * quantile(ttft, 0.5),
        "ttft_p99_ms": 1000 * quantile(ttft, 0.99),
        "gap_p50_ms": 1000 * quantile(gaps, 0.5),
        "gap_p99_ms": 1000 * quantile(gaps, 0.99),
        "burst_s": elapsed,
    }


async def hold(
    url: str,
    streams: int,
    measure: Callable[[], Awaitable[dict[str, Any]]],
    opening: int = 100,
    open_timeout: float = 180.0,
    stall_s: float = 15.0,
) -> dict[str, Any]:
    """Open ``streams`` idle streams (``opening`` at a time), ``measure()``, close them all.

    A stream counts as held once its first chunk has arrived through the gateway. Opening
    stops after ``open_timeout``, or once no stream has opened for ``stall_s`` (a gateway
    that caps its connections upstream queues the rest); those count as ``stalled``.
    """
    body = chat_body(HOLD_MODEL, stream=True)
    gate = asyncio.Semaphore(opening)
    release = asyncio.Event()
    held = 0
    failures: dict[str, int] = {}
    settled = asyncio.Event()

    def settle() -> None:
        if held + sum(failures.values()) >= streams:
            settled.set()

    async with session(timeout=open_timeout + 600) as client:

        async def one() -> None:
            nonlocal held
            try:
                async with gate:
                    response = await client.post(url, data=body, headers=HEADERS)
                    seen = StreamRead()
                    await read_stream(response, seen, first_only=True)
                    if response.status != 200 or not seen.contents:
                        response.close()
                        raise ValueError(f"HTTP {response.status}")
                held += 1
                settle()
                try:
                    await release.wait()
                finally:
                    response.close()
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                name = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
                failures[name] = failures.get(name, 0) + 1
                settle()

        began = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(streams)]
        progress = -1
        while not settled.is_set() and progress < held + sum(failures.values()):
            progress = held + sum(failures.values())
            left = open_timeout - (time.monotonic() - began)
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), min(stall_s, left))
        opened_s = time.monotonic() - began
        stalled = streams - held - sum(failures.values())
        if stalled:
            failures["stalled"] = stalled
        await asyncio.sleep(1.0)  # let the gateway settle
        result = {"held": held, "held_failures": failures, "hold_open_s": opened_s}
        result |= await measure()
        release.set()
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:  # still opening
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return result


async def get_json(url: str, method: str = "GET") -> Any:
    async with session(timeout=10.0) as client, client.request(method, url) as response:
        return await response.json(content_type=None)


async def quiesce(pid: int, limit_s: float = 60.0, window_s: float = 0.5) -> float:
    """Wait until ``pid``'s tree uses under 5% of a core (or ``limit_s``); return the wait.

    So that work left over from one test (tearing down thousands of streams, say) is not
    charged to the next.
    """
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        before = cpu_seconds(pid)
        await asyncio.sleep(window_s)
        if cpu_seconds(pid) - before < 0.05 * window_s:
            break
    return time.monotonic() - began


def results_file(path: str | None) -> TextIO | None:
    """``--json FILE`` opened for appending (its folder made if need be), or None without it."""
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path).open("a")


def cell(values: list[Any], fmt: str) -> str:
    """A table cell: the median of the numbers, with (min to max) when they differ."""
    numbers = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not numbers:
        texts = sorted({str(v) for v in values if v is not None})
        return ", ".join(texts) if texts else "\N{EN DASH}"
    middle, low, high = (fmt.format(f(numbers)) for f in (statistics.median, min, max))
    return middle if low == high else f"{middle} ({low}\N{EN DASH}{high})"


def revision(component: str) -> str:
    """This checkout's short commit, marked when ``component`` has uncommitted changes."""

    def git(*argv: str) -> str:
        exe = shutil.which("git")
        if exe is None:
            return "?"
        done = subprocess.run(
            [exe, "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", component) else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the architecture where there is none)."""
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="the benchmark's fake OpenAI upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--chunk-gap-ms", type=float, default=10.0)
    args = parser.parse_args()
    run_upstream(args.port, args.chunks, args.chunk_gap_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
