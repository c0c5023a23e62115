"""cortex's hot path measured against going straight to the upstream.

Usage: .venv/bin/python bench/gateway.py [--seconds 10] [--concurrency 32] [--streams 200]

Starts a fast fake neuron (aiohttp; pinned to CPU 0), a real `cortex serve` in front of it
(pinned to CPU 1), and a load generator (this process, CPU 0). For both targets, direct
and through cortex, it measures:

- non-streaming requests/s at --concurrency, and cortex's CPU time per request (from
  /proc: user + system of the cortex process over the run);
- a burst of --streams streams started together (100 chunks each, one every 10 ms):
  time to first chunk and the gap between chunks, p50 / p99, and cortex CPU per chunk.

Prints one JSON object per measurement and a small table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

CHUNKS = 100
CHUNK_GAP = 0.01
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the fake neuron


def fake_neuron_app() -> web.Application:
    models = [{"id": "m", "harness": "vllm", "status": "ready", "in_flight": 0}]
    answer = json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()
    chunk = (
        b'data: {"id":"x","object":"chat.completion.chunk","choices":'
        b'[{"index":0,"delta":{"content":"tok"}}]}\n\n'
    )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "devices": []})

    async def list_models(request: web.Request) -> web.Response:
        return web.json_response(models)

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"hostname": "fake", "devices": []})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=answer, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(CHUNKS):
            await response.write(chunk)
            await asyncio.sleep(CHUNK_GAP)
        usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": CHUNKS}}
        await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/models", list_models)
    app.router.add_get("/discovery", discovery)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def run_fake_neuron(port: int) -> None:
    web.run_app(fake_neuron_app(), host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- load generation


async def throughput(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json"}
    done = errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        errors += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    return {"requests": done, "errors": errors, "rps": done / elapsed}


async def burst(url: str, streams: int) -> dict[str, float]:
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    headers = {"Content-Type": "application/json"}
    first: list[float] = []
    gaps: list[float] = []
    chunks = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = asyncio.Event()

        async def one() -> None:
            nonlocal chunks
            await start.wait()
            began = time.monotonic()
            last: float | None = None
            async with session.post(url, data=body, headers=headers) as response:
                async for _ in response.content.iter_any():
                    now = time.monotonic()
                    if last is None:
                        first.append(now - began)
                    else:
                        gaps.append(now - last)
                    last = now
                    chunks += 1

        tasks = [asyncio.create_task(one()) for _ in range(streams)]
        await asyncio.sleep(0.2)
        began = time.monotonic()
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - began
    return {
        "streams": streams,
        "reads": chunks,
        "ttft_p50_ms": 1000 * statistics.median(first),
        "ttft_p99_ms": 1000 * statistics.quantiles(first, n=100)[98],
        "gap_p50_ms": 1000 * statistics.median(gaps),
        "gap_p99_ms": 1000 * statistics.quantiles(gaps, n=100)[98],
        "burst_s": elapsed,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} never answered")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    neuron_port, api, metrics = free_port(), free_port(), free_port()
    bench_dir = Path(__file__).resolve().parent
    neuron = subprocess.Popen(
        pinned(
            0, [sys.executable, str(bench_dir / "gateway.py"), "--fake-neuron", str(neuron_port)]
        )
    )
    work = Path(tempfile.mkdtemp())
    (work / "cortex.toml").write_text(
        f'models_config = "{work / "models.toml"}"\nlog_level = "warning"\n'
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'[[neurons]]\nname = "fake"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    cortex = subprocess.Popen(
        pinned(
            1,
            [
                str(Path(sys.executable).with_name("cortex")),
                "serve",
                "--config",
                str(work / "cortex.toml"),
            ],
        )
    )
    results: list[dict[str, Any]] = []
    try:
        await wait_http(f"http://127.0.0.1:{neuron_port}/health")
        await wait_http(f"http://127.0.0.1:{api}/health")
        await asyncio.sleep(1.0)  # a first poll so the model is known
        direct = f"http://127.0.0.1:{neuron_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{api}/v1/chat/completions"
        await throughput(via, 1.0, 4)  # warm up
        for target, url in (("direct", direct), ("cortex", via)):
            cpu0 = cpu_seconds(cortex.pid)
            result: dict[str, Any] = {"measure": "throughput", "target": target}
            result |= await throughput(url, args.seconds, args.concurrency)
            if target == "cortex":
                used = cpu_seconds(cortex.pid) - cpu0
                result["cortex_cpu_ms_per_request"] = 1000 * used / max(1, result["requests"])
            results.append(result)
            print(json.dumps(result), flush=True)
        for target, url in (("direct", direct), ("cortex", via)):
            cpu0 = cpu_seconds(cortex.pid)
            result = {"measure": "burst", "target": target} | await burst(url, args.streams)
            if target == "cortex":
                used = cpu_seconds(cortex.pid) - cpu0
                result["cortex_cpu_us_per_chunk"] = 1e6 * used / max(1, args.streams * CHUNKS)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        for proc in (cortex, neuron):
            proc.send_signal(signal.SIGINT)
        for proc in (cortex, neuron):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--fake-neuron", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_neuron:
        run_fake_neuron(args.fake_neuron)
        return 0
    results = asyncio.run(main_async(args))
    by = {(r["measure"], r["target"]): r for r in results}
    d, c = by["throughput", "direct"], by["throughput", "cortex"]
    print(
        f"\nthroughput @{args.concurrency}: direct {d['rps']:.0f} req/s, "
        f"cortex {c['rps']:.0f} req/s ({c['rps'] / d['rps']:.0%}), "
        f"cortex CPU {c['cortex_cpu_ms_per_request']:.2f} ms/request"
    )
    d, c = by["burst", "direct"], by["burst", "cortex"]
    print(
        f"burst of {args.streams} streams: TTFT p50/p99 direct {d['ttft_p50_ms']:.0f}/"
        f"{d['ttft_p99_ms']:.0f} ms, cortex {c['ttft_p50_ms']:.0f}/{c['ttft_p99_ms']:.0f} ms; "
        f"gap p50/p99 direct {d['gap_p50_ms']:.1f}/{d['gap_p99_ms']:.1f} ms, "
        f"cortex {c['gap_p50_ms']:.1f}/{c['gap_p99_ms']:.1f} ms; "
        f"cortex CPU {c['cortex_cpu_us_per_chunk']:.0f} us/chunk"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
