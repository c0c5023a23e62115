"""Which HTTP client should cortex relay with? A minimal relay, measured with each.

Usage: .venv/bin/python bench/relay_clients.py [--seconds 8] [--concurrency 32]
       [--server uvicorn|hypercorn] [--clients httpx,aiohttp,raw]

The same minimal Starlette relay (read body, POST upstream, return the answer) runs on CPU 1
under uvicorn + httptools (cortex's server; ``--server hypercorn`` for the neuron's) with
each client in turn: httpx with its stock transport, aiohttp, and ``raw``: a bare keep-alive
HTTP/1.1 client on httptools' response parser (below), the floor of what any Python client
could cost here. The upstream is bench/gateway.py's fake neuron on CPU 0, the load
generator runs on CPU 0. Reports requests/s at --concurrency and the relay's CPU time per
request. This is the measurement behind cortex's choice of aiohttp for its hot path.
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


class _RawConnection(asyncio.Protocol):
    """One upstream connection: httptools parses the answer; nothing else is handled.

    No timeouts, no redirects, no retries, no streaming, no flow control: a floor to
    measure against, not a client to ship.
    """

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[bytes] | None = None
        self.chunks: list[bytes] = []
        self.status = 0
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("upstream closed the connection"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.reusable = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.done is not None:
            self.done.set_result(b"".join(self.chunks))


class RawClient:
    def __init__(self, upstream: str) -> None:
        from urllib.parse import urlsplit

        url = urlsplit(upstream)
        self.host, self.port, self.path = url.hostname or "", url.port or 80, url.path
        self.idle: list[_RawConnection] = []
        self.head = f"POST {self.path} HTTP/1.1\r\nhost: {url.netloc}\r\n".encode()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.idle:
            conn = self.idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_RawConnection, self.host, self.port)
        conn.done = asyncio.get_running_loop().create_future()
        conn.chunks = []
        assert conn.transport is not None  # noqa: S101 - set in connection_made
        conn.transport.write(
            self.head
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
        )
        data = await conn.done
        if conn.reusable:
            self.idle.append(conn)
        else:
            conn.transport.close()
        return conn.status, data

    async def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


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
        elif client == "raw":
            state["c"] = RawClient(upstream)
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
        if client == "raw":
            status, data = await state["c"].post(body)  # type: ignore[attr-defined]
            return Response(data, status, media_type="application/json")
        async with state["c"].post(upstream, data=body, headers=headers) as answer:  # type: ignore[attr-defined]
            return Response(await answer.read(), answer.status, media_type="application/json")

    return Starlette(
        routes=[Route("/health", health), Route("/v1/chat/completions", relay, methods=["POST"])],
        lifespan=lifespan,
    )


def serve_relay(server: str, client: str, port: int, upstream: str) -> None:
    import uvloop

    app = relay_app(client, upstream)
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", log_level="warning"
        )
        return
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    uvloop.run(serve(app, config))


async def main_async(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    neuron = subprocess.Popen(
        pinned(0, [sys.executable, str(HERE / "gateway.py"), "--fake-neuron", str(upstream_port)])
    )
    upstream = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    try:
        await wait_http(f"http://127.0.0.1:{upstream_port}/health")
        for client in args.clients.split(","):
            port = free_port()
            relay = subprocess.Popen(
                pinned(
                    1,
                    [sys.executable, __file__, "--serve", args.server, client, str(port), upstream],
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
                print(json.dumps({"server": args.server, "client": client, **result}), flush=True)
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
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    parser.add_argument("--clients", default="httpx,aiohttp,raw")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        server, client, port, upstream = args.serve
        serve_relay(server, client, int(port), upstream)
        return 0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
