"""One client connection: HTTP/1.1 on httptools' public parser, with limits a client cannot pass.

A pure asyncio ``Protocol``: bytes in through :meth:`Connection.data_received`, bytes out
through the transport, no I/O of its own, so tests drive it with an in-memory transport.

This module owns the connection's life on its transport: being counted in (or turned away),
its timers, flow control both ways, the order requests are answered in, and closing so that
the client reads its last answer. Parsing is a :class:`~cortex.http.reader.RequestReader`'s,
which hands each request back (:class:`~cortex.http.reader.Sink`); which exchange answers it
is the listener's ``dispatch``, and how the server renders its own refusals its ``render``;
an exchange sees the connection only as a :class:`~cortex.http.exchange.Port`.

- A connection has ``header_timeout`` seconds from its first byte of a head (or from being
  opened) to its last; then it is closed, with 408 if part of a head came. Between requests
  it may stay idle ``keep_alive_timeout`` seconds. A body has ``body_timeout`` seconds from
  the end of its head: then 408, and the connection closes.
- A client that takes none of its answer for ``send_timeout`` seconds (its socket full), or
  none of what is left of it once cortex closes, is cut off: the connection is aborted, the
  request being answered stops, and the connection no longer counts.
- Over ``max_connections``, a new connection is answered 503 at once and closed.
- Requests are answered one at a time, in order. At most one request is parsed ahead of the
  one being answered; what follows it is held unparsed (reading pauses once that passes
  ``HIGH_WATER``). When the client goes away, the request being answered is the one
  cancelled; the one waiting is dropped.
- A request refused (a head too large, a broken body) is answered after those before it,
  then the connection closes; if its own answer had begun, the connection just closes.
- Bodies of all requests in progress share the listener's ``max_body_memory``: past it, 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from cortex.errors import (
    BodiesTooLarge,
    CortexError,
    RequestTimeout,
    TooManyConnections,
)
from cortex.http.exchange import HIGH_WATER, Budget, Exchange, Port
from cortex.http.limits import Limits
from cortex.http.reader import RequestReader

log = logging.getLogger("cortex.http")

LINGER_S = 2.0
"""After its last answer, how long a closing connection waits for the client to close."""
MAX_LINGERING_REFUSED = 1024
"""Connections refused over ``max_connections`` that may linger at once (and no more than a
quarter of ``max_connections``, 16 at least: their descriptors count); more close at once."""

Dispatch = Callable[[Port, dict[str, Any], bytes, bool, bool], Exchange]
"""``(port, scope, raw_path, keep_alive, expect_continue)``: the exchange for a request."""


class Host(Protocol):
    """What a connection uses of its listener (:class:`~cortex.http.listener.Listener`)."""

    limits: Limits
    loop: asyncio.AbstractEventLoop
    dispatch: Dispatch
    render: Callable[[CortexError], bytes]
    budget: Budget
    stopping: bool
    refused: set[Connection]

    def opened(self, conn: Connection) -> bool:
        """Count ``conn`` in, or refuse it (False)."""
        ...

    def closed(self, conn: Connection) -> None: ...
    def settled(self) -> None:
        """An answer ended: while stopping, see if all is quiet."""
        ...


class Connection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    transport: asyncio.Transport
    reader: RequestReader

    def __init__(self, host: Host) -> None:
        self.host = host
        self.limits = host.limits
        self.loop = host.loop
        self.budget = host.budget
        self.render = host.render
        self.client: tuple[str, int] | None = None
        self.write_paused = False
        self.read_paused = False
        self.lost = False
        self.accepted = False
        self.refusal: CortexError | None = None
        self.running: Exchange | None = None
        """The request being answered."""
        self.parsing: Exchange | None = None
        """The request whose body is being received (the last one parsed)."""
        self.waiting: deque[Exchange] = deque()
        self.held = bytearray()
        """What came after the request waiting, unparsed until its turn."""
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stalled: asyncio.TimerHandle | None = None
        """Armed while the client takes none of what is written (``send_timeout``)."""
        self._flushing = False
        """Closed with bytes unsent: the ``send_timeout`` runs on, whatever the client takes."""
        self.lingering = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        if not self.host.opened(self):
            self._turn_away()
            return
        self.accepted = True
        self.client = _address(transport.get_extra_info("peername"))
        server = _address(transport.get_extra_info("sockname"))
        self.reader = RequestReader(self, self.limits, self.client, server)
        self._arm(self.limits.header_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self.host.closed(self)
        if self.running is not None:
            self.running.lost()
        self._drop_waiting()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; a half-closed client gets no answer

    def pause_writing(self) -> None:
        self.write_paused = True
        self._stall()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._stalled is not None and not self._flushing:
            self._stalled.cancel()
            self._stalled = None
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        # No catch-all here: a bug of cortex's own reaches the event loop, which logs it and
        # closes this connection (and a test that feeds bytes sees it raised).
        if self.lingering:
            return  # the answer is out; what the client still sends is thrown away
        if self.refusal is not None or self.transport.is_closing():
            return
        if self.waiting:
            self.hold(data)
            return
        self.reader.feed(data)
        self._body_clock()

    # The reader's sink (cortex.http.reader.Sink).

    def queued(self) -> bool:
        return bool(self.waiting)

    def hold(self, data: bytes) -> None:
        """A request is queued already: hold ``data`` unparsed until its turn comes.

        Reading goes on until ``HIGH_WATER`` is held, so that a client who leaves is seen at
        once (and the request being answered stops); then it pauses.
        """
        self.held += data
        if len(self.held) > HIGH_WATER:
            self._pause()

    def head_begun(self) -> None:
        if self.running is None:
            self._arm(self.limits.header_timeout, self._head_late)

    def request(
        self, scope: dict[str, Any], raw_path: bytes, keep_alive: bool, expect_continue: bool
    ) -> None:
        if self.running is None:
            self._disarm()
        keep_alive = keep_alive and not self.host.stopping
        exchange = self.host.dispatch(self, scope, raw_path, keep_alive, expect_continue)
        self.parsing = exchange
        if self.running is None:
            self._begin(exchange)
        else:  # pipelined behind a request still being answered
            self.waiting.append(exchange)

    def body(self, data: bytes) -> CortexError | None:
        exchange = self.parsing
        if exchange is None:
            return None
        budget, size = self.budget, len(data)
        if budget.used + size > budget.limit:
            return BodiesTooLarge(
                "request bodies in progress fill this gateway's memory budget; retry shortly",
                retry_after=self.limits.retry_after,
            )
        budget.used += size
        exchange.counted += size
        exchange.body += data
        if len(exchange.body) > HIGH_WATER:
            self._pause()
        exchange.received()
        return None

    def complete(self) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.body_done = True
            exchange.received()
            if exchange is self.running:
                self._disarm()  # the body's clock
                # Paused for a large body, reading resumes once it is in, so that a client
                # who leaves while its answer is worked on is seen (and the work stops).
                self._resume()

    def refuse(self, error: CortexError) -> None:
        """Answer ``error`` after any answer under way, then close; read nothing more."""
        self.refusal = error
        self._pause()
        log.info("refused a request from %s: %s", self.client, error.message)
        broken = self.parsing
        if broken is not None and not broken.body_done:
            # The request whose body broke off can never be read in full: the refusal is its
            # answer, and whatever was waiting for that body stops.
            self.parsing = None
            broken.abandon()
            if broken is self.running:
                self.running = None
                if broken.started:  # its answer is under way: no room for a second one
                    self.close()
                    return
            elif broken in self.waiting:
                self.waiting.remove(broken)
        if self.running is None:
            self.say(error)
        else:  # the requests before it are answered first
            self.waiting.append(_Refusal(self, error))

    # What the exchanges use (cortex.http.exchange.Port).

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def closing(self) -> bool:
        return self.lost or self.transport.is_closing()

    def close(self) -> None:
        """Close once what is written has been sent, or abort after ``send_timeout``.

        A transport that closes waits for its unsent bytes, and so would wait for ever on a
        client that reads nothing more, the connection still counted.
        """
        transport = self.transport
        if transport.is_closing():
            return
        transport.close()
        if not self.lost and transport.get_write_buffer_size():
            self._flushing = True
            self._stall()

    async def drain(self) -> None:
        """Until the client's socket takes more (at once if it does, or the client is gone)."""
        if not self.write_paused or self.lost:
            return
        if self._drained is None:
            self._drained = self.loop.create_future()
        await asyncio.shield(self._drained)

    def want_body(self) -> None:
        """The exchange being answered waits for its body: read from the client again."""
        if self.read_paused and self.running is self.parsing:
            self._resume()

    def finished(self, exchange: Exchange) -> None:
        """``exchange``'s answer has been written in full: on to the next request, or close."""
        if self.running is exchange:
            self.running = None
        if self.lost:
            return
        if not exchange.keep_alive or self.host.stopping:
            self._linger()
            self.host.settled()
            return
        if self.waiting:
            self._begin(self.waiting.popleft())
            if not self.waiting and self.held and self.refusal is None:
                held = bytes(self.held)
                self.held.clear()
                self._resume()
                self.reader.feed(held)
            self._body_clock()
            return
        self._resume()
        if self.reader.head_began:
            self._arm(self.limits.header_timeout, self._head_late)
        else:
            self._arm(self.limits.keep_alive_timeout, self.close)

    def say(self, error: CortexError) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.render(error))
            self._linger()

    # What the listener uses.

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answer under way."""
        if self.running is None:
            self.close()
        else:
            self.running.keep_alive = False
            self._drop_waiting()

    def cut(self) -> None:
        """The drain ran out of time: end the answer under way and close."""
        if self.running is not None:
            self.running.cut()
        self.close()

    # Its own.

    def _begin(self, exchange: Exchange) -> None:
        self._disarm()
        self.running = exchange
        exchange.start()

    def _drop_waiting(self) -> None:
        for waiting in self.waiting:
            waiting.release()
        self.waiting.clear()

    def _body_clock(self) -> None:
        """The request being answered waits for the rest of its body: ``body_timeout`` runs.

        Armed only when a read ends with a body incomplete (most bodies come whole with their
        head, and take no timer), and only once per body.
        """
        running = self.running
        if (
            running is not None
            and not running.body_done
            and running is self.parsing
            and self._timer is None
            and self.refusal is None
            and not self.lost
        ):
            self._arm(self.limits.body_timeout, self._body_late)

    def _body_late(self) -> None:
        """``body_timeout`` ran out with the body incomplete: 408, and the connection closes.

        While cortex itself holds reading back (the app has not taken 64 KiB of the body yet)
        the client is not the one late, and the clock starts again.
        """
        self._timer = None
        running = self.running
        if running is None or running.body_done or self.refusal is not None:
            return
        if self.read_paused:
            self._arm(self.limits.body_timeout, self._body_late)
            return
        self.refuse(RequestTimeout(f"the request body took over {self.limits.body_timeout:g}s"))

    def _pause(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def _linger(self) -> None:
        """Close after an answer, so that the client gets to read it.

        Closing a socket that has unread bytes (the rest of a body refused early, the rest of
        a head too large) resets the connection, and the client may lose the answer with it.
        So cortex sends its FIN, throws away what still comes, and closes when the client
        does, or after ``LINGER_S``.
        """
        transport = self.transport
        if transport.is_closing():
            return
        if self.lost or not transport.can_write_eof():
            self.close()
            return
        self.lingering = True
        transport.write_eof()
        self._resume()
        self._arm(LINGER_S, self.close)

    def _head_late(self) -> None:
        """``header_timeout`` ran out: 408 if part of a head came, else close quietly."""
        self._timer = None
        if self.running is not None:
            return
        if self.reader.head_began:
            self.say(RequestTimeout(f"the request head took over {self.limits.header_timeout:g}s"))
        else:
            self.close()

    def _turn_away(self) -> None:
        """Over ``max_connections``: 503 at once, then closed."""
        error = TooManyConnections(
            "this gateway has too many connections open; retry shortly",
            retry_after=self.limits.retry_after,
        )
        self.transport.write(self.render(error))
        lingering = min(MAX_LINGERING_REFUSED, max(16, self.limits.max_connections // 4))
        if len(self.host.refused) > lingering:
            self.transport.close()  # a flood: descriptors matter more than a clean close
        else:
            self._linger()

    def _stall(self) -> None:
        if self._stalled is None and not self.lost:
            self._stalled = self.loop.call_later(self.limits.send_timeout, self._send_late)

    def _send_late(self) -> None:
        """The client took nothing of its answer for ``send_timeout``: drop the connection."""
        self._stalled = None
        log.info(
            "cut off %s: it took nothing of its answer for %gs",
            self.client,
            self.limits.send_timeout,
        )
        self.transport.abort()

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Refusal(Exchange):
    """A refusal that waits behind a pipelined request still being answered."""

    def __init__(self, conn: Connection, error: CortexError) -> None:
        super().__init__(conn, {}, keep_alive=False, expect_continue=False)
        self.error = error

    def start(self) -> None:
        self.conn.say(self.error)


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
