"""cortex's HTTP server: its own HTTP/1.1 protocol on httptools, on sockets cortex binds.

Why not uvicorn or Hypercorn (the neuron's server): on the gateway's one core Hypercorn's
pure-Python h11 parser cost twice the CPU per relayed request, and uvicorn, which cortex ran
on before, has no public way to bound a request head's size or the time it may take, nor to
answer requests below ASGI; its private classes changed between releases. cortex's server
(:mod:`cortex.http`) is a small sans-IO protocol on httptools' public parser, in C: see
:mod:`cortex.http.connection` for the limits, :mod:`cortex.http.direct` for the inference
fast path, :mod:`cortex.http.asgi` for every other route.

What serving also takes care of, here:

- A long accept backlog (``LISTEN_BACKLOG``): the sockets are bound here, so a port that is
  taken is a one-line error, not a failure from deep inside start-up. The kernel caps the
  backlog at ``net.core.somaxconn``; cortex warns at start when that cap is lower.
- The ASGI lifespan: the app's startup before the first request, its shutdown after the last.
- A drain: when ``stop`` is set the listener closes, idle keep-alive connections close, and
  requests in flight get ``graceful`` seconds to finish. Streams still running then end
  with one in-band error event (``Direct.cut``), and the rest are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cortex.http.direct import Direct, Pipe
from cortex.http.dispatch import Dispatch
from cortex.http.head import error_answer
from cortex.http.lifespan import Lifespan
from cortex.http.limits import Limits
from cortex.http.listener import Listener

__all__ = [
    "LISTEN_BACKLOG",
    "Direct",
    "Limits",
    "Pipe",
    "accept_queue_cap",
    "bind",
    "serve",
    "warn_if_accept_queue_capped",
]

log = logging.getLogger("cortex")

LISTEN_BACKLOG = 4096
"""Connections the kernel queues before cortex accepts them (capped by net.core.somaxconn)."""
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def accept_queue_cap(path: Path = SOMAXCONN) -> int | None:
    """The kernel's cap on a listener's accept queue (``net.core.somaxconn``), or None where
    it cannot be read (not Linux). Below ``LISTEN_BACKLOG``, a burst of new connections
    larger than the cap overflows the queue: the kernel drops the overflow's handshakes, and
    those clients (a legitimate one among a flood's attackers too) wait on their TCP
    retransmissions, 1 s, then 2, 4, 8 s, before cortex sees them."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def warn_if_accept_queue_capped(path: Path = SOMAXCONN) -> None:
    """One warning at start when ``net.core.somaxconn`` caps the accept queue below
    ``LISTEN_BACKLOG`` (Linux's default since 5.4 is 4096)."""
    cap = accept_queue_cap(path)
    if cap is not None and cap < LISTEN_BACKLOG:
        log.warning(
            "net.core.somaxconn is %d: the kernel queues at most %d connections that cortex "
            "has not accepted yet (cortex asks for %d); in a burst of more new connections "
            "than that, the rest wait on TCP retransmission (1 s, then 2, 4, 8 s) before "
            "cortex sees them. Raise it (sysctl -w net.core.somaxconn=%d), then restart cortex",
            cap,
            cap,
            LISTEN_BACKLOG,
            LISTEN_BACKLOG,
        )


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
    app: Any,
    sock: socket.socket,
    *,
    stop: asyncio.Event,
    graceful: float,
    lifespan: bool,
    limits: Limits | None = None,
    on_count: Callable[[int], None] | None = None,
    direct: Direct | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then drain for up to ``graceful`` s.

    ``on_count`` is called with the number of open client connections when it changes.
    ``direct`` answers the POSTs to its ``paths`` without ASGI (the app's inference fast
    path, :class:`Direct`); every other request goes to ``app``.
    """
    loop = asyncio.get_running_loop()
    host, port = sock.getsockname()[:2]
    life = Lifespan(app) if lifespan else None
    if life is not None:
        try:
            await life.startup()
        except BaseException:
            sock.close()  # it is never served
            raise
    dispatch = Dispatch(app, direct, life.state if life else {})
    listener = Listener(dispatch, limits or Limits(), loop, render=error_answer, on_count=on_count)
    try:
        server = await loop.create_server(listener.protocol, sock=sock, backlog=LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        if life is not None:
            await life.shutdown()
        raise
    log.info("listening on http://%s:%d", host, port)
    try:
        await stop.wait()
    finally:
        server.close()
        await _drain(listener, graceful)
        if life is not None:
            await life.shutdown()


async def _drain(listener: Listener, graceful: float) -> None:
    """Let answers under way finish for up to ``graceful`` s, then cut what is left."""
    listener.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listener.quiet.wait(), graceful)
    left = [conn for conn in listener.connections if conn.running is not None]
    if left:
        log.warning("drain: %d answer(s) still under way after %gs are cut", len(left), graceful)
    tasks = [c.running.task for c in left if c.running is not None and c.running.task]
    for conn in list(listener.connections) + list(listener.refused):
        conn.cut()
    if tasks:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
