"""Which HTTP client should cortex relay with? A minimal relay, measured with each.

Usage: .venv/bin/python bench/relay_clients.py [--seconds 8] [--concurrency 32]

The same minimal Starlette relay (read body, POST upstream, return the answer) runs under
Hypercorn on CPU 1 with each client in turn: httpx with its stock transport, and aiohttp.
The upstream is bench/gateway.py's fake neuron on CPU 0, the load generator runs on CPU 0.
Reports requests/s at --concurrency and the relay's CPU time per request. This is the
measurement behind cortex's choice of aiohttp for its hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from gateway import cpu_seconds, free_port, pinned, throughput, wait_http

HERE = Path(__file__).resolve().parent


def relay_app(client: str, upstream: str):  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client == "httpx":
            import httpx

            state["c"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000))
        else:
            import aiohttp

            state["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await state["c"].aclose() if client == "httpx" else await state["c"].close()  # type: ignore[attr-defined]

    async def health(request: Request) -> Response:
        return Response("ok")

    async def relay(request: Request) -> Response:
        body = await request.body()
        headers = {"content-type": "application/json"}
        if client == "httpx":
            answer = await state["c"].post(upstream, content=body, headers=headers)  # type: ignore[attr-defined]
            return Response(answer.content, answer.status_code, media_type="application/json")
        async with state["c"].post(upstream, data=body, headers=headers) as answer:  # type: ignore[attr-defined]
            return Response(await answer.read(), answer.status, media_type="application/json")

    return Starlette(
        routes=[Route("/health", health), Route("/v1/chat/completions", relay, methods=["POST"])],
        lifespan=lifespan,
    )


def serve_relay(client: str, port: int, upstream: str) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    import uvloop

    uvloop.run(serve(relay_app(client, upstream), config))


async def main_async(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    neuron = subprocess.Popen(
        pinned(0, [sys.executable, str(HERE / "gateway.py"), "--fake-neuron", str(upstream_port)])
    )
    upstream = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    try:
        await wait_http(f"http://127.0.0.1:{upstream_port}/health")
        for client in ("httpx", "aiohttp"):
            port = free_port()
            relay = subprocess.Popen(
                pinned(
                    1,
                    [sys.executable, __file__, "--serve", client, str(port), upstream],
                )
            )
            try:
                await wait_http(f"http://127.0.0.1:{port}/health")
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                await throughput(url, 1.0, 4)
                cpu0 = cpu_seconds(relay.pid)
                result = await throughput(url, args.seconds, args.concurrency)
                used = cpu_seconds(relay.pid) - cpu0
                result["cpu_ms_per_request"] = 1000 * used / max(1, result["requests"])
                print(json.dumps({"client": client, **result}), flush=True)
            finally:
                relay.send_signal(signal.SIGINT)
                relay.wait(timeout=15)
    finally:
        neuron.send_signal(signal.SIGINT)
        neuron.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        client, port, upstream = args.serve
        serve_relay(client, int(port), upstream)
        return 0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
