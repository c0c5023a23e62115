"""One client connection: HTTP/1.1 on httptools' public parser, with limits a client cannot pass.

A pure asyncio ``Protocol``: bytes in through :meth:`Connection.data_received`, bytes out
through the transport, no I/O of its own, so tests drive it with an in-memory transport.

This module owns the connection's life on its transport: being counted in (or turned away),
its timers, flow control both ways, and closing so that the client reads its last answer.
What it reads is :mod:`cortex.http.reader`'s (the head limits, trailers, upgrade offers), and
the order it answers in is :mod:`cortex.http.pipeline`'s; :class:`Connection` is all three.

- A connection has ``header_timeout`` seconds from its first byte of a head (or from being
  opened) to its last; then it is closed, with 408 if part of a head came. Between requests
  it may stay idle ``keep_alive_timeout`` seconds.
- A client that takes none of its answer for ``send_timeout`` seconds (its socket full), or
  none of what is left of it once cortex closes, is cut off: the connection is aborted, the
  request being answered stops, and the connection no longer counts.
- Over ``max_connections``, a new connection is answered 503 at once and closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from cortex.errors import CortexError, RequestTimeout, TooManyConnections
from cortex.http.head import error_answer
from cortex.http.pipeline import Pipeline

if TYPE_CHECKING:
    from cortex.http.listener import Listener

log = logging.getLogger("cortex.http")

LINGER_S = 2.0
"""After its last answer, how long a closing connection waits for the client to close."""
MAX_LINGERING_REFUSED = 1024
"""Connections refused over ``max_connections`` that may linger at once (and no more than a
quarter of ``max_connections``: their descriptors count); more close at once."""


class Connection(Pipeline, asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    transport: asyncio.Transport

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.loop = listener.loop
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.write_paused = False
        self.read_paused = False
        self.lost = False
        self.accepted = False
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stalled: asyncio.TimerHandle | None = None
        """Armed while the client takes none of what is written (``send_timeout``)."""
        self._flushing = False
        """Closed with bytes unsent: the ``send_timeout`` runs on, whatever the client takes."""
        self.lingering = False
        super().__init__()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        if not self.listener.opened(self):
            self._turn_away()
            return
        self.accepted = True
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        self._arm(self.limits.header_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self.listener.closed(self)
        if self.running is not None:
            self.running.lost()
        for waiting in self.waiting:
            waiting.release()
        self.waiting.clear()
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
        if self.lingering:
            return  # the answer is out; what the client still sends is thrown away
        if self.refusal is not None or self.transport.is_closing():
            return
        if self.waiting:
            self._hold(data)
            return
        try:
            self._feed(data)
        except Exception as exc:  # a bug of cortex's own: never out of a protocol callback
            log.error("error reading a request from %s", self.client, exc_info=exc)
            self.transport.abort()

    # What the exchanges use.

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

    def _pause(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def say(self, error: CortexError) -> None:
        if not self.transport.is_closing():
            self.transport.write(error_answer(error))
            self._linger()

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
        if self.head_began:
            self.say(RequestTimeout(f"the request head took over {self.limits.header_timeout:g}s"))
        else:
            self.close()

    def _turn_away(self) -> None:
        """Over ``max_connections``: 503 at once, then closed."""
        error = TooManyConnections(
            "this gateway has too many connections open; retry shortly",
            retry_after=self.limits.retry_after,
        )
        self.transport.write(error_answer(error))
        lingering = min(MAX_LINGERING_REFUSED, max(16, self.limits.max_connections // 4))
        if len(self.listener.refused) > lingering:
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

    def _arm(self, seconds: float, then: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
