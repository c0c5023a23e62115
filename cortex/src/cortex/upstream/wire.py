"""The relay's HTTP/1.1 client to neurons: keep-alive connections and httptools' parser.

cortex polls and loads models with aiohttp; only the relay's requests go through here. In
the minimal relay of ``bench/relay_clients.py`` on cortex's server, aiohttp was over half of
the CPU per request (bench/README.md, ``relay_clients.py``).

What the relay relies on, all of it here:

- :class:`ConnectTimeout` / :class:`ConnectFailed`: no connection, so nothing was sent and
  another neuron may be tried. These are the only errors that prove the request was not
  delivered. A request is written again (fresh connection) only when it provably never
  left: its pooled connection was seen closed before the write, or the write failed at
  once. A connection closed after the write and before any byte of the answer is
  :class:`Dropped`: the neuron may have the request and be running it.
- :class:`ReadTimeout` (a ``TimeoutError``): connected, and nothing arrived for
  ``idle_timeout`` seconds, for the head or between two pieces of the body.
- :class:`Broken`: the answer broke off, or was not HTTP. :class:`OverLimit`: it broke one
  of :class:`Limits` (head size, header count, head time, whole-answer size and time).
  :class:`Crossed`: it echoed another request's ``x-cortex-request``. Each carries the
  ``reason`` the relay counts it under, and its connection is closed.
- An answer is the one asked for on its connection, never another: bytes that arrive
  while the connection is idle, or after the answer in the same read, close it (and are
  told to ``stray``); each request carries ``x-cortex-request``, numbered per connection;
  an answer that echoes an earlier number (a late second answer to a request before) is
  skipped and the one asked for read after it; one that echoes a number never sent is
  refused.
- :meth:`Answer.close` before the answer is complete drops the connection, so the neuron sees
  the client go and tells vLLM to abort. A complete answer's connection goes back to the pool.
- Flow control: an answer buffers at most ``HIGH_WATER`` bytes the relay has not taken yet;
  then reading from the neuron pauses until the relay catches up (a slow client).
- :meth:`Answer.push` hands a stream's pieces on from the connection's own callback instead:
  no task wakes up, and no future or timer is made, per piece. The relay's streams use it on
  cortex's own server; flow control is then the caller's (:meth:`Answer.pause`).
- A neuron named by host name is looked up once per ``resolve_every`` seconds, not once per
  connection: a burst that opens 168 connections asks the resolver once (the lookups share
  one future). A failed connect forgets the addresses, so the next one looks the name up
  again; a failed look-up while old addresses are known keeps using them. Several addresses
  are tried in turn, each with a share of the connect timeout, and the one that answered is
  tried first from then on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cortex.upstream.answer import HIGH_WATER, Answer, Limits
from cortex.upstream.connection import ECHO, Stray
from cortex.upstream.errors import (
    Broken,
    ConnectFailed,
    ConnectTimeout,
    Crossed,
    Dropped,
    OverLimit,
    ReadTimeout,
    WireError,
)
from cortex.upstream.pool import RESOLVE_EVERY, Connector, Pool, Resolver, getaddrinfo, host_of, tcp

__all__ = [
    "ECHO",
    "HIGH_WATER",
    "Answer",
    "Broken",
    "ConnectFailed",
    "ConnectTimeout",
    "Connector",
    "Crossed",
    "Dropped",
    "Limits",
    "OverLimit",
    "ReadTimeout",
    "Resolver",
    "Stray",
    "Upstream",
    "WireError",
    "getaddrinfo",
    "host_of",
    "tcp",
]


DEFAULT_LIMITS = Limits()


def _no_stray(reason: str) -> None:
    pass


class Upstream:
    """The relay's client: one pool of kept-alive connections per neuron."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        idle_timeout: float,
        keepalive: float = 60.0,
        resolver: Resolver = getaddrinfo,
        resolve_every: float = RESOLVE_EVERY,
        connector: Connector = tcp,
        limits: Limits = DEFAULT_LIMITS,
        stray: Stray = _no_stray,
    ):
        self.connect_timeout = connect_timeout
        self.connector = connector
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.resolver = resolver
        self.resolve_every = resolve_every
        self.limits = limits
        self.stray = stray
        self._pools: dict[str, Pool] = {}

    async def post(
        self, base: str, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Answer:
        """Send ``body`` to ``base + path``; the answer once its status and headers are in.

        ``headers`` go out in order, repeated names repeated; ``Host``, ``Content-Length``
        and ``x-cortex-request`` are this client's own.

        The request is written again (on a fresh connection) only when it provably never
        left: the kept-alive connection was closed before the write, or the write failed
        at once, before the kernel took a byte. A connection closed after the write and
        before any byte of the answer is :class:`Dropped`: the neuron may have the request.
        """
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = Pool(base, asyncio.get_running_loop(), self)
        lines = [b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\nHost: ", pool.host_header]
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        lines.append(b"\r\nContent-Length: %d\r\n" % len(body))
        lines.append(b"")  # the echo header, numbered per connection
        lines.append(body)
        conn = pool.take()
        fresh = 0
        while True:
            if conn is None:
                if fresh == 3:  # connections that close as soon as they are made
                    raise ConnectFailed("each new connection closed before the request went out")
                fresh += 1
                conn = await pool.connect(self.connect_timeout)
            transport = conn.transport
            assert transport is not None  # noqa: S101 - set in connection_made
            if conn.parser is None or transport.is_closing():
                conn.drop()  # closed while pooled, not yet seen: nothing was written
                conn = pool.take()
                continue
            conn.sent += 1
            echo = b"%d" % conn.sent
            answer = Answer(conn, self.idle_timeout, self.limits, echo)
            conn.answer = answer
            conn.head_read = conn.head_size = 0
            lines[-2] = b"X-Cortex-Request: %s\r\n\r\n" % echo
            transport.write(b"".join(lines))
            if transport.is_closing() and conn.answer is answer:
                # The write failed at once (a reset the loop had not seen yet): the kernel
                # took no byte of it, so it may go out again.
                conn.drop()
                conn = pool.take()
                continue
            try:
                await answer._await_head()
            except BaseException:
                answer.close()
                raise
            return answer

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
