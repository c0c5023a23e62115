"""Idle connections to one neuron, and how new ones are made: the connector seam and the
resolver (each neuron's addresses looked up once per ``resolve_every``)."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from cortex.upstream.connection import Connection
from cortex.upstream.errors import ConnectFailed, ConnectTimeout

if TYPE_CHECKING:
    from cortex.upstream.wire import Upstream

RESOLVE_EVERY = 30.0
"""Seconds a neuron's looked-up addresses are used before its name is looked up again."""

log = logging.getLogger("cortex.upstream")

Resolver = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]
"""``(host, port)`` to ``getaddrinfo`` entries: ``(family, type, proto, canonname, sockaddr)``."""

P = TypeVar("P", bound=asyncio.Protocol)


class Connector(Protocol):
    """Opens one connection and attaches a protocol to it: the seam under this client.

    :func:`tcp` is the real one; :class:`cortex.upstream.memory.MemoryNeuron` serves
    connections in memory, so the client and the relay above it are tested byte for byte
    without sockets (as httpx's ``MockTransport`` does for httpx).
    """

    async def __call__(
        self,
        protocol: Callable[[], P],
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> P: ...


async def tcp(
    protocol: Callable[[], P],
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    server_hostname: str | None,
) -> P:
    """A TCP (or TLS) connection, through the event loop."""
    _, conn = await asyncio.get_running_loop().create_connection(
        protocol, host, port, ssl=tls, server_hostname=server_hostname
    )
    return conn


async def getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    """The system resolver, off the event loop's thread."""
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Pool:
    """Idle connections to one neuron, most recently used first out; its addresses."""

    def __init__(self, base: str, loop: asyncio.AbstractEventLoop, up: Upstream) -> None:
        url = urlsplit(base)
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.host_header = url.netloc.encode("latin-1")
        self.loop = loop
        self.keepalive = up.keepalive
        self.limits = up.limits
        self.stray = up.stray
        self.idle: collections.deque[Connection] = collections.deque()
        self._up = up
        self._named = not _is_address(self.host)
        self._addresses: list[str] = [] if self._named else [self.host]
        self._resolved_at = 0.0
        self._lookup: asyncio.Future[list[str]] | None = None
        self._sweep: asyncio.TimerHandle | None = None

    def take(self) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.alive and time.monotonic() - conn.idle_since < self.keepalive:
                return conn
            conn.drop()
        return None

    def put(self, conn: Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.keepalive, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for ``keepalive`` seconds; come back for the next one.

        One timer per pool, not per connection: a pooled connection costs no timer call.
        """
        self._sweep = None
        now = time.monotonic()
        while self.idle and (
            not self.idle[0].alive or now - self.idle[0].idle_since >= self.keepalive
        ):
            self.idle.popleft().drop()  # the oldest first: put appends, take pops the newest
        if self.idle:
            due = self.idle[0].idle_since + self.keepalive - now
            self._sweep = self.loop.call_later(max(due, 0.001), self._expire)

    async def connect(self, limit: float) -> Connection:
        """A new connection within ``limit`` seconds, look-up included.

        A name with several addresses (IPv6 and IPv4, say) gets them tried in turn, each
        with an equal share of what is left of ``limit``, so an address that never answers
        cannot use up the whole of it. The one that answers is tried first from then on.
        """
        deadline = self.loop.time() + limit
        try:
            async with asyncio.timeout(limit):
                addresses = await self._resolve() if self._named else self._addresses
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {limit:g}s") from None
        except OSError as exc:
            raise ConnectFailed(str(exc)) from None
        error: OSError | TimeoutError | None = None
        for tried, address in enumerate(addresses):
            share = (deadline - self.loop.time()) / (len(addresses) - tried)
            try:
                async with asyncio.timeout(share):
                    conn = await self._up.connector(
                        lambda: Connection(self),
                        address,
                        self.port,
                        self.ssl,
                        self.host if self.ssl else None,
                    )
            except (OSError, TimeoutError) as exc:
                error = exc
                continue
            if tried and self._addresses is addresses:
                self._addresses = [address, *(a for a in addresses if a != address)]
            return conn
        if self._named:
            self._addresses = []  # look the name up again next time: it may have moved
        if isinstance(error, TimeoutError):
            raise ConnectTimeout(f"no connection within {limit:g}s")
        raise ConnectFailed(str(error))

    async def _resolve(self) -> list[str]:
        if self._addresses and time.monotonic() - self._resolved_at < self._up.resolve_every:
            return self._addresses
        if self._lookup is None:
            self._lookup = asyncio.ensure_future(self._look_up())
            # Its error is each waiter's; taken here too, in case every waiter timed out.
            self._lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: one caller's connect timeout must not cancel the others' look-up.
        return await asyncio.shield(self._lookup)

    async def _look_up(self) -> list[str]:
        try:
            found = await self._up.resolver(self.host, self.port)
        except OSError as exc:
            if not self._addresses:
                raise OSError(f"cannot resolve {self.host!r}: {exc}") from None
            log.warning("looking up %s failed (%s); keeping its last addresses", self.host, exc)
        else:
            addresses = list(dict.fromkeys(host_of(entry[4]) for entry in found))
            if not addresses:
                raise OSError(f"cannot resolve {self.host!r}: no address")
            self._addresses = addresses
        finally:
            self._lookup = None
        self._resolved_at = time.monotonic()
        return self._addresses

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self.idle:
            self.idle.popleft().drop()


def host_of(sockaddr: tuple[Any, ...]) -> str:
    """The host of a looked-up address, with an IPv6 scope (a link-local address's) kept."""
    host = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3]:
        return f"{host}%{sockaddr[3]}"
    return host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
