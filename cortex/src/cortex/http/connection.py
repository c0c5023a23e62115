"""One client connection: HTTP/1.1 on httptools' public parser, with limits a client cannot pass.

A pure asyncio ``Protocol``: bytes in through :meth:`Connection.data_received`, bytes out
through the transport, no I/O of its own, so tests drive it with an in-memory transport.

- The head of a request (request line and headers) is bounded as it arrives: no more than
  ``max_header_bytes`` of it is ever fed to the parser, and no URL, header name or value may
  pass ``max_header_field_bytes``. Either way the answer is 431 and the connection closes.
- A connection has ``header_timeout`` seconds from its first byte of a head (or from being
  opened) to its last; then it is closed, with 408 if part of a head came. Between requests
  it may stay idle ``keep_alive_timeout`` seconds.
- A client that takes none of its answer for ``send_timeout`` seconds (its socket full), or
  none of what is left of it once cortex closes, is cut off: the connection is aborted, the
  request being answered stops, and the connection no longer counts.
- Requests are answered one at a time, in order. A request pipelined behind one still being
  answered waits, and reading from the client pauses meanwhile. When the client goes away,
  the request being answered is the one cancelled; those waiting are dropped.
- A chunked request body may not end with trailers: 400, and the connection closes. They
  would come after the app has the request's headers, and no more than ``max_header_bytes``
  of them is read.
- An offer to upgrade (``Upgrade: h2c`` from ``curl --http2``) is declined by ignoring it:
  the request, body and all, is answered over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools

from cortex.errors import BadRequest, CortexError, HeadTooLarge, RequestTimeout, TooManyConnections
from cortex.http.asgi import ASGI, AsgiExchange
from cortex.http.direct import DirectExchange
from cortex.http.exchange import HIGH_WATER, Exchange
from cortex.http.head import error_answer

if TYPE_CHECKING:
    from cortex.http.listener import Listener

log = logging.getLogger("cortex.http")

LINGER_S = 2.0
"""After its last answer, how long a closing connection waits for the client to close."""
MAX_LINGERING_REFUSED = 1024
"""Connections refused over ``max_connections`` that may linger at once; more close at once."""


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the reason is on the connection."""


class Connection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    transport: asyncio.Transport

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.loop = listener.loop
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.running: Exchange | None = None
        """The request being answered."""
        self.parsing: Exchange | None = None
        """The request whose body is being received (the last one parsed)."""
        self.waiting: deque[Exchange] = deque()
        self.refusal: CortexError | None = None
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
        # The head being parsed.
        self.in_head = True
        self.head_began = False
        self.head_fed = 0
        self.trailer_fed: int | None = None
        """Bytes fed since the last chunk's size line, while that chunk may be the last one."""
        self.head_parsed = 0
        """The head's URL and headers as parsed: bounds a head fed along with a body's end."""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.upgrading = False
        self.resuming = False
        self.held = bytearray()
        self.lingering = False

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
            # Requests are queued already: hold these bytes unparsed, and go on reading so
            # that a client who leaves is seen at once (the request being answered stops).
            self.held += data
            if len(self.held) > HIGH_WATER:
                self._pause()
            return
        try:
            self._feed(data)
        except Exception as exc:  # a bug of cortex's own: never out of a protocol callback
            log.error("error reading a request from %s", self.client, exc_info=exc)
            self.transport.abort()

    def _feed(self, data: bytes) -> None:
        max_head = self.limits.max_header_bytes
        while data:
            if self.in_head:
                # A head is fed to the parser no further than the limit, so a header that
                # never ends is never buffered (httptools would keep all of it).
                room = max_head - self.head_fed
                if room <= 0:
                    self._refuse(HeadTooLarge(f"request line and headers exceed {max_head} bytes"))
                    return
                if len(data) > room:
                    piece, data = data[:room], data[room:]
                else:
                    piece, data = data, b""
                self.head_fed += len(piece)
            elif self.trailer_fed is not None:
                # What follows a chunk's size line with no data yet may be trailers, which
                # httptools would buffer without bound: fed no further than a head would be.
                room = max_head - self.trailer_fed
                if room <= 0:
                    self._refuse(BadRequest("a request may not carry trailers"))
                    return
                piece, data = data[:room], data[room:]
                self.trailer_fed += len(piece)
            else:
                piece, data = data, b""
            try:
                self.parser.feed_data(piece)
                continue
            except httptools.HttpParserUpgrade as upgrade:
                data = piece[upgrade.args[0] :] + data
            except httptools.HttpParserError as exc:
                self._invalid(exc)
                return
            try:
                self._decline_upgrade()
            except httptools.HttpParserError as exc:
                self._invalid(exc)
                return

    def _invalid(self, exc: httptools.HttpParserError) -> None:
        """llhttp refused the bytes, or a callback raised: 400 (or the callback's refusal)."""
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, _Refused):
            log.error("error parsing a request from %s", self.client, exc_info=cause)
        self._refuse(self.refusal or BadRequest(f"invalid HTTP request: {exc}"))

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.resuming:
            return
        self.head_began = True
        self.head_parsed = 0
        self.url = b""
        self.headers = []
        if self.running is None:
            self._arm(self.limits.header_timeout, self._head_late)

    def on_url(self, url: bytes) -> None:
        if self.resuming:
            return
        self.url += url
        self._parsed(len(url))
        if len(self.url) > self.limits.max_header_field_bytes:
            self.refusal = HeadTooLarge(
                f"the URL exceeds {self.limits.max_header_field_bytes} bytes"
            )
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.resuming:
            return
        if not self.in_head:  # a trailer: the app has its headers already
            self.refusal = BadRequest("a request may not carry trailers")
            raise _Refused
        limit = self.limits.max_header_field_bytes
        if len(name) > limit or len(value) > limit:
            self.refusal = HeadTooLarge(
                f"a header name or value exceeds {limit} bytes ({name[:64].decode('latin-1')!r})"
            )
            raise _Refused
        self._parsed(len(name) + len(value) + 4)
        self.headers.append((name.lower(), value))

    def _parsed(self, size: int) -> None:
        # A head that follows the end of a body in one read was fed whole, in body state.
        self.head_parsed += size
        if self.head_parsed > self.limits.max_header_bytes:
            self.refusal = HeadTooLarge(
                f"request line and headers exceed {self.limits.max_header_bytes} bytes"
            )
            raise _Refused

    def on_headers_complete(self) -> None:
        if self.resuming:  # the head made up to read an upgrade offer's body
            self.resuming = False
            return
        self.in_head = False
        self.head_began = False
        if self.running is None:
            self._disarm()
        parser = self.parser
        if parser.should_upgrade():
            self.upgrading = True
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self.refusal = BadRequest("invalid request target")
            raise _Refused from None
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        raw_path: bytes = url.path or b"/"  # ``GET http://host HTTP/1.1`` has none
        keep_alive = version != "1.0" and parser.should_keep_alive() and not self.listener.stopping
        expect_continue = version == "1.1" and any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in self.headers
        )
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI,
            "http_version": version,
            "method": method,
            "scheme": "http",
            "root_path": "",
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": self.headers,
            "client": self.client,
            "server": self.server,
        }
        direct = self.listener.direct
        exchange: Exchange
        if direct is not None and method == "POST" and b"%" not in raw_path:
            path = raw_path.decode("latin-1")
            if path in direct.paths:
                scope["path"] = path
                exchange = DirectExchange(self, scope, keep_alive, expect_continue)
                exchange.direct = direct
                self._enqueue(exchange)
                return
        scope["path"] = unquote(raw_path.decode("latin-1"), encoding="latin-1")
        scope["state"] = self.listener.state.copy()
        exchange = AsgiExchange(self, scope, keep_alive, expect_continue)
        exchange.app = self.listener.app
        self._enqueue(exchange)

    def on_chunk_header(self) -> None:
        self.trailer_fed = 0

    def on_chunk_complete(self) -> None:
        self.trailer_fed = None

    def on_body(self, body: bytes) -> None:
        self.trailer_fed = None
        exchange = self.parsing
        if exchange is None:
            return
        exchange.body += body
        if len(exchange.body) > HIGH_WATER:
            self._pause()
        exchange.received()

    def on_message_complete(self) -> None:
        if self.upgrading:  # the body (if any) comes after the upgrade offer is declined
            return
        self.in_head = True
        self.head_fed = 0
        self.trailer_fed = None
        exchange = self.parsing
        if exchange is not None:
            exchange.body_done = True
            exchange.received()
            if exchange is self.running:
                # Paused for a large body, reading resumes once it is in, so that a client
                # who leaves while its answer is worked on is seen (and the work stops).
                self._resume()

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
                self._feed(held)
            return
        self._resume()
        if self.head_began:
            self._arm(self.limits.header_timeout, self._head_late)
        else:
            self._arm(self.limits.keep_alive_timeout, self.close)

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answer under way."""
        if self.running is None:
            self.close()
        else:
            self.running.keep_alive = False
            self.waiting.clear()

    def cut(self) -> None:
        """The drain ran out of time: end the answer under way and close."""
        if self.running is not None:
            self.running.cut()
        self.close()

    # Inside.

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

    def _decline_upgrade(self) -> None:
        """Go on over HTTP/1.1 after an ``Upgrade`` offer, reading the offer's body too.

        llhttp stops at the end of an upgrade offer's head, body unread. A fresh parser is
        given a head of cortex's own with the same framing, whose body then becomes the
        offer's; its callbacks are skipped until that head is through.
        """
        self.upgrading = False
        self.parser = httptools.HttpRequestParser(self)
        framing = b"".join(  # every line as sent, so llhttp frames (or refuses) it the same
            b"%s: %s\r\n" % (name, value)
            for name, value in self.headers
            if name in (b"transfer-encoding", b"content-length")
        )
        self.resuming = True
        self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")

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
            self.waiting.append(_Refusal(self, error))

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
        if len(self.listener.refused) > MAX_LINGERING_REFUSED:
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
