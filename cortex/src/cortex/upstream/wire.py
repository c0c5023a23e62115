"""The relay's HTTP/1.1 client to neurons: keep-alive connections and httptools' parser.

cortex polls and loads models with aiohttp; only the relay's requests go through here. In
the minimal relay of ``bench/relay_clients.py`` on cortex's server, aiohttp was over half of
the CPU per request (bench/README.md, ``relay_clients.py``).

What the relay relies on, all of it here:

- :class:`ConnectTimeout` / :class:`ConnectFailed`: no connection, so nothing was sent and
  another neuron may be tried. These are the only errors that prove the request was not
  delivered. A kept-alive connection that the neuron closes before any byte of the answer
  (its keep-alive timeout firing as cortex reuses it) is replaced by a fresh one once,
  without the caller seeing it; a fresh connection closed that way is :class:`Broken`: the
  neuron had the whole request and may be running it, so it must not be sent again.
- :class:`ReadTimeout` (a ``TimeoutError``): connected, and nothing arrived for
  ``idle_timeout`` seconds, for the head or between two pieces of the body.
- :class:`Broken`: the answer broke off, or was not HTTP.
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
import collections
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
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


class WireError(Exception):
    """The neuron's answer could not be had."""


class ConnectFailed(WireError):
    """No connection: nothing reached the neuron, so another one may be asked."""


class ConnectTimeout(ConnectFailed):
    """The neuron did not accept the connection within ``connect_timeout``."""


class ReadTimeout(WireError, TimeoutError):
    """Connected, but nothing arrived for ``idle_timeout`` seconds."""


class Broken(WireError):
    """The answer broke off, or was not HTTP."""


class _Dropped(Exception):
    """The connection closed before the first byte of the answer."""


class Answer:
    """One answer: ``status`` and ``headers`` are set when :meth:`Upstream.post` returns."""

    def __init__(self, conn: _Connection, idle: float) -> None:
        self._conn: _Connection | None = conn
        self._idle = idle
        self._loop = conn.loop
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        """As received, with names in lower case."""
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._begun = False  # a byte of the answer arrived
        self._head = False
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Pushed (see push): where the pieces go, and who hears of the end.
        self._to: Callable[[bytes], None] | None = None
        self._ended: Callable[[BaseException | None], None] | None = None
        self._last = 0.0  # when the last piece came, or reading resumed
        self._timer: asyncio.TimerHandle | None = None

    # -- fed by the connection

    def _headers_done(self, status: int) -> None:
        self.status = status
        self._head = True
        self._wake()

    @property
    def is_event_stream(self) -> bool:
        """Whether the answer is Server-Sent Events (a stream to relay as it comes)."""
        for name, value in self.raw_headers:
            if name == b"content-type":
                return value.startswith(b"text/event-stream")
        return False

    def _body(self, data: bytes) -> None:
        if self._to is not None:
            self._last = time.monotonic()
            self._deliver(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._conn = None  # back in the pool (or closed): no longer this answer's
        self._wake()
        self._end(None)

    def _fail(self, error: BaseException) -> None:
        self._conn = None
        if not self._done and self._error is None:
            self._error = error
        self._wake()
        self._end(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the relay

    async def _wait(self) -> None:
        """Until the connection has news for this answer, or ``idle`` seconds pass."""
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._idle, _expire, waiter, self._idle)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _await_head(self) -> None:
        while not self._head:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever is buffered, joined, each time."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    async def read(self) -> bytes:
        """The whole body (what :meth:`iter_any` gives, without a generator per answer)."""
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts.append(self._take())
            elif self._done:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def _take(self) -> bytes:
        """Everything buffered, joined; reading resumes if it paused for the buffer."""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    def close(self) -> None:
        """Drop the connection unless the answer is complete (then it is already pooled).

        A pushed answer stops there: ``ended`` is not called.
        """
        self._to = self._ended = None
        if self._timer is not None:
            self._timer.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop()

    release = close  # an unread answer cannot leave its connection reusable either

    # -- pushed

    def push(
        self, data: Callable[[bytes], None], ended: Callable[[BaseException | None], None]
    ) -> None:
        """From now on, call ``data`` with each piece of the body as it arrives, then ``ended``.

        ``data`` runs inside the connection's ``data_received``; what it raises ends the
        answer (the connection is dropped). ``ended`` is called once: with None when the
        answer is complete, else with the error (:class:`ReadTimeout` when nothing came for
        ``idle`` seconds while not paused, :class:`Broken`, or what ``data`` raised). Pieces
        buffered before this call go to ``data`` at once.
        """
        self._to, self._ended = data, ended
        self._last = time.monotonic()
        if self._chunks:
            self._deliver(self._take())
        if self._done:
            self._end(None)
        elif self._error is not None:
            self._end(self._error)
        elif self._ended is not None:
            self._timer = self._loop.call_later(self._idle, self._tick)

    def pause(self) -> None:
        """Stop reading from the neuron (the reader of a pushed answer cannot keep up)."""
        if self._conn is not None:
            self._conn.pause()

    def resume(self) -> None:
        if self._conn is not None:
            self._last = time.monotonic()  # silence while paused is not the neuron's
            self._conn.resume()

    def _deliver(self, data: bytes) -> None:
        assert self._to is not None  # noqa: S101 - only called while pushing
        try:
            self._to(data)
        except Exception as exc:
            self._abort(exc)

    def _abort(self, error: BaseException) -> None:
        """End a pushed answer on cortex's side: drop the connection, then report ``error``."""
        ended = self._ended
        self.close()
        if ended is not None:
            ended(error)

    def _end(self, error: BaseException | None) -> None:
        ended = self._ended
        if ended is None:
            return
        self._to = self._ended = None
        if self._timer is not None:
            self._timer.cancel()
        ended(error)

    def _tick(self) -> None:
        """The idle timer of a pushed answer: one per answer, set again as pieces come."""
        if self._ended is None:
            return
        now = time.monotonic()
        if self._conn is not None and self._conn.paused:
            due = now + self._idle
        else:
            due = self._last + self._idle
            if due <= now:
                self._abort(ReadTimeout(f"nothing for {self._idle:g}s"))
                return
        self._timer = self._loop.call_later(due - now, self._tick)


def _expire(waiter: asyncio.Future[None], idle: float) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"nothing for {idle:g}s"))


class _Connection(asyncio.Protocol):
    """One connection to a neuron; at most one answer on it at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.alive = True
        self.keep_alive = True
        self.paused = False
        self.idle_since = 0.0
        self.delimited = True
        self.informational = False  # a 1xx head: the real answer follows it
        self.finished = False  # the answer is complete; pooled once the read is parsed
        self.stray = False  # a message nobody asked for began: never reuse the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # nobody asked: the connection cannot be trusted any more
            self.drop()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            answer = self.answer
            self.drop()
            if answer is not None:
                answer._fail(Broken(f"the neuron's answer is not HTTP: {exc}"))
            return
        if self.finished:
            # Only now, with the whole read parsed: bytes after the answer (a second answer
            # in the same read) would otherwise complete another message and pool the
            # connection twice, and two requests would share it and swap answers.
            self.finished = False
            if self.stray or not (self.keep_alive and self.delimited and self.alive):
                self.drop()
            else:
                self.resume()
                self.pool.put(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        answer, self.answer = self.answer, None
        if answer is None:
            return
        if answer._head and not self.delimited:  # an answer that ends when the connection does
            answer._complete()
        elif answer._begun:
            answer._fail(Broken("the neuron closed the connection mid-answer"))
        else:
            answer._fail(_Dropped())

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.answer is None:
            self.stray = True
            return
        self.answer._begun = True
        self.answer.raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head only trailers come: they are dropped, never merged into the
        # headers (RFC 9110 6.5.1), which a whole answer would otherwise pass on as such.
        if self.answer is not None and not self.answer._head:
            self.answer.raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.informational = status < 200
        if self.informational:
            return
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.answer is not None:
            names = {name for name, _ in self.answer.raw_headers}
            self.delimited = b"content-length" in names or b"transfer-encoding" in names
            self.answer._headers_done(status)

    def on_body(self, body: bytes) -> None:
        if self.answer is not None:
            self.answer._body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            return
        answer, self.answer = self.answer, None
        if answer is None:  # the end of a stray message: nobody's
            self.stray = True
            return
        self.finished = True
        answer._complete()

    # -- flow control and the end

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def drop(self) -> None:
        self.alive = False
        self.answer = None
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """Idle connections to one neuron, most recently used first out; its addresses."""

    def __init__(self, base: str, loop: asyncio.AbstractEventLoop, up: Upstream) -> None:
        url = urlsplit(base)
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.host_header = url.netloc.encode("latin-1")
        self.loop = loop
        self.keepalive = up.keepalive
        self.idle: collections.deque[_Connection] = collections.deque()
        self._up = up
        self._named = not _is_address(self.host)
        self._addresses: list[str] = [] if self._named else [self.host]
        self._resolved_at = 0.0
        self._lookup: asyncio.Future[list[str]] | None = None
        self._sweep: asyncio.TimerHandle | None = None

    def take(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.alive and time.monotonic() - conn.idle_since < self.keepalive:
                return conn
            conn.drop()
        return None

    def put(self, conn: _Connection) -> None:
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

    async def connect(self, limit: float) -> _Connection:
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
                        lambda: _Connection(self),
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
    ):
        self.connect_timeout = connect_timeout
        self.connector = connector
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.resolver = resolver
        self.resolve_every = resolve_every
        self._pools: dict[str, _Pool] = {}

    async def post(
        self, base: str, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Answer:
        """Send ``body`` to ``base + path``; the answer once its status and headers are in.

        ``headers`` go out in order, repeated names repeated; ``Host`` and
        ``Content-Length`` are this client's own.
        """
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = _Pool(base, asyncio.get_running_loop(), self)
        lines = [b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\nHost: ", pool.host_header]
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        lines.append(b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        request = b"".join(lines)
        conn = pool.take()
        while True:
            reused = conn is not None
            if conn is None:
                conn = await pool.connect(self.connect_timeout)
            answer = Answer(conn, self.idle_timeout)
            conn.answer = answer
            assert conn.transport is not None  # noqa: S101 - set in connection_made
            conn.transport.write(request)
            try:
                await answer._await_head()
            except _Dropped:
                if reused:  # closed by the neuron while idle, as we sent: once more, fresh
                    conn = None
                    continue
                # A fresh connection took the whole request: the neuron may be running it,
                # so this is no ConnectFailed (which the relay would send elsewhere again).
                raise Broken("the neuron closed the connection without answering") from None
            except BaseException:
                answer.close()
                raise
            return answer

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
