"""The HTTP server under cortex's two ASGI apps: uvicorn with httptools, on sockets cortex binds.

Why uvicorn and not Hypercorn (the rest of the project's server): on the gateway's one core,
Hypercorn with its pure-Python h11 parser cost 0.25 ms of CPU per relayed request and made a
200-stream burst's time to first token 124 ms p99 against 37 ms direct; uvicorn with the
httptools (llhttp, in C) parser, same app, same machine, 0.13 ms and 76 ms
(``bench/README.md``). The neuron stays on Hypercorn: it carries one host's traffic.

What the switch must not lose, and where it is kept:

- A long accept backlog (``LISTEN_BACKLOG``): the sockets are bound here, so a port that is
  taken is a one-line error, not a server's ``sys.exit`` from deep inside start-up.
- A drain: when ``stop`` is set the listener closes, idle keep-alive connections close, and
  requests in flight get ``graceful`` seconds to finish before they are cancelled.
- A cap on the request head. h11 refused heads over 16 KiB; httptools has no cap, so
  :class:`_Protocol` refuses a request line plus headers over ``MAX_HEAD_BYTES`` with a 400.
- cortex's own signal handling: uvicorn's is switched off (cortex flips its draining flag
  first, then sets ``stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("cortex")

LISTEN_BACKLOG = 4096
"""Connections the kernel queues before cortex accepts them (capped by net.core.somaxconn)."""
MAX_HEAD_BYTES = 64 * 1024
"""The request line and headers of one request, together."""
KEEP_ALIVE_S = 75
"""An idle client connection stays open this long (longer than common load balancers' 60 s)."""


class HeadTooLarge(Exception):
    """Raised inside httptools' header callbacks; it becomes a parser error there."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a cap on the size of a request's head."""

    _head = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head += size
        if self._head > MAX_HEAD_BYTES:
            # httptools turns this into a parser error; uvicorn answers 400 and closes.
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._head > MAX_HEAD_BYTES:
            msg = f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
        super().send_400_response(msg)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # cortex installs its own handlers (cli.py)


def bind(listen: str) -> socket.socket:
    """A listening socket for ``HOST:PORT`` (``[::]:PORT`` for IPv6)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # accepted sockets inherit this one's. Without it Nagle holds a stream's small chunks
    # back until the client's delayed ACK (up to 40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(
    app: Any, sock: socket.socket, *, stop: asyncio.Event, graceful: float, lifespan: bool
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then drain for up to ``graceful`` s."""
    config = uvicorn.Config(
        app,
        http=_Protocol,
        loop="none",  # cortex runs its own (uvloop when installed)
        ws="none",
        interface="asgi3",
        lifespan="on" if lifespan else "off",
        log_config=None,  # cortex's logging.basicConfig stays in charge
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting middleware on every request
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(1, round(graceful)),
        backlog=LISTEN_BACKLOG,
    )
    server = _Server(config)
    if not log.isEnabledFor(logging.DEBUG):  # its start/stop chatter, twice (two listeners)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    async def exit_on_stop() -> None:
        await stop.wait()
        server.should_exit = True

    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d", host, port)
    watcher = asyncio.ensure_future(exit_on_stop())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
    if not server.started:
        raise RuntimeError(f"the server on {host}:{port} did not start")
