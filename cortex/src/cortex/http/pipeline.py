"""The order a connection's requests are answered in: one at a time, pipelined ones queued.

Owns which exchange is being answered, which wait behind it, and the bytes held unparsed
meanwhile; :mod:`cortex.http.reader` hands it each request as its head is read, and
:mod:`cortex.http.connection` owns the transport the answers go out on. Kept apart because
it changes with HTTP/1.1's pipelining and refusal rules, not with parsing or timers.

- Requests are answered one at a time, in order. A request pipelined behind one still being
  answered waits, and what follows it is held unparsed (reading pauses once that passes
  ``HIGH_WATER``). When the client goes away, the request being answered is the one
  cancelled; those waiting are dropped.
- A request refused (a head too large, a broken body) is answered after those before it,
  then the connection closes; if its own answer had begun, the connection just closes.

A base of :class:`~cortex.http.connection.Connection`, never used alone: what it needs of the
connection is declared below for the type checker only.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, cast

from cortex.errors import CortexError
from cortex.http.exchange import HIGH_WATER, Exchange
from cortex.http.reader import RequestReader

if TYPE_CHECKING:
    from cortex.http.connection import Connection

log = logging.getLogger("cortex.http")


class Pipeline(RequestReader):
    """The exchanges of one connection, answered in order (see the module)."""

    if TYPE_CHECKING:  # the connection's (the reader declares the rest)
        lost: bool

        def close(self) -> None: ...
        def say(self, error: CortexError) -> None: ...
        def _linger(self) -> None: ...

    def __init__(self) -> None:
        super().__init__()
        self.running: Exchange | None = None
        """The request being answered."""
        self.parsing: Exchange | None = None
        """The request whose body is being received (the last one parsed)."""
        self.waiting: deque[Exchange] = deque()
        self.held = bytearray()

    def finished(self, exchange: Exchange) -> None:
        """``exchange``'s answer has been written in full: on to the next request, or close."""
        if self.running is exchange:
            self.running = None
        if self.lost:
            return
        if not exchange.keep_alive or self.listener.stopping:
            self._linger()
            self.listener.settled()
            return
        if self.waiting:
            self._begin(self.waiting.popleft())
            if not self.waiting and self.held and self.refusal is None:
                held = bytes(self.held)
                self.held.clear()
                self._resume()
                self._feed(held)  # which starts the body's clock if it is incomplete
            else:
                self._body_clock()
            return
        self._resume()
        if self.head_began:
            self._arm(self.limits.header_timeout, self._head_late)
        else:
            self._arm(self.limits.keep_alive_timeout, self.close)

    def _hold(self, data: bytes) -> None:
        """A request is queued already: hold ``data`` unparsed until its turn comes.

        Reading goes on until ``HIGH_WATER`` is held, so that a client who leaves is seen at
        once (and the request being answered stops); then it pauses.
        """
        self.held += data
        if len(self.held) > HIGH_WATER:
            self._pause()

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answer under way."""
        if self.running is None:
            self.close()
        else:
            self.running.keep_alive = False
            for waiting in self.waiting:
                waiting.release()
            self.waiting.clear()

    def cut(self) -> None:
        """The drain ran out of time: end the answer under way and close."""
        if self.running is not None:
            self.running.cut()
        self.close()

    def _enqueue(self, exchange: Exchange) -> None:
        self.parsing = exchange
        if self.running is None:
            self._begin(exchange)
        else:  # pipelined behind a request still being answered
            self.waiting.append(exchange)

    def _begin(self, exchange: Exchange) -> None:
        self._disarm()
        self.running = exchange
        exchange.start()

    def _refuse(self, error: CortexError) -> None:
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
            self.waiting.append(_Refusal(cast("Connection", self), error))


class _Refusal(Exchange):
    """A refusal that waits behind a pipelined request still being answered."""

    def __init__(self, conn: Connection, error: CortexError) -> None:
        super().__init__(conn, {}, keep_alive=False, expect_continue=False)
        self.error = error

    def start(self) -> None:
        self.conn.say(self.error)
