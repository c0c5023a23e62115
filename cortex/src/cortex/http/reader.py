"""Reading requests off the wire: httptools' parser, fed within bounds a client cannot pass.

Owns the head of each request as it arrives and what it becomes (an ASGI scope and the
exchange that answers it); :mod:`cortex.http.connection` owns the transport and its timers,
:mod:`cortex.http.pipeline` the order requests are answered in. Kept apart because it changes
with HTTP's framing and llhttp's behaviour, not with how a connection lives or waits.

- The head of a request (request line and headers) is bounded as it arrives: no more than
  ``max_header_bytes`` of it is ever fed to the parser, and no URL, header name or value may
  pass ``max_header_field_bytes``. Either way the answer is 431 and the connection closes.
- A chunked request body may not end with trailers: 400, and the connection closes. They
  would come after the app has the request's headers, and no more than ``max_header_bytes``
  of them is read.
- An offer to upgrade (``Upgrade: h2c`` from ``curl --http2``) is declined by ignoring it:
  the request, body and all, is answered over HTTP/1.1.

A base of :class:`~cortex.http.connection.Connection`, never used alone: what it needs of the
connection is declared below for the type checker only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools

from cortex.errors import BadRequest, BodiesTooLarge, CortexError, HeadTooLarge, RequestTimeout
from cortex.http.asgi import ASGI, AsgiExchange
from cortex.http.direct import DirectExchange
from cortex.http.exchange import HIGH_WATER, Exchange

if TYPE_CHECKING:
    from collections import deque

    from cortex.http.connection import Connection
    from cortex.http.listener import Limits, Listener

log = logging.getLogger("cortex.http")


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the reason is on the connection."""


class RequestReader:
    """The parser of a connection's requests and the head being parsed (see the module)."""

    if TYPE_CHECKING:  # the connection's, and its pipeline's
        listener: Listener
        limits: Limits
        client: tuple[str, int] | None
        server: tuple[str, int] | None
        running: Exchange | None
        parsing: Exchange | None

        waiting: deque[Exchange]

        def _enqueue(self, exchange: Exchange) -> None: ...
        def _hold(self, data: bytes) -> None: ...
        def _refuse(self, error: CortexError) -> None: ...
        def _pause(self) -> None: ...
        def _resume(self) -> None: ...
        def _arm(self, seconds: float, then: Any) -> None: ...
        def _disarm(self) -> None: ...
        def _head_late(self) -> None: ...

        _timer: Any
        read_paused: bool

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.refusal: CortexError | None = None
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
        self.fed_tail = b""
        """The last 3 bytes fed, to see a head's end split between two reads."""

    def _feed(self, data: bytes) -> None:
        """Parse ``data``, stopping once a request waits behind the one being answered.

        Each piece fed to the parser ends at the first end of a head (``CRLF CRLF``) in it,
        so at most one request completes per piece: once one is queued, the rest is held
        unparsed (and reading pauses past ``HIGH_WATER``) until its turn comes. Without
        this, one read of pipelined requests became thousands of queued exchanges.
        """
        self._parse(data)
        self._body_clock()

    def _parse(self, data: bytes) -> None:
        max_head = self.limits.max_header_bytes
        while data:
            if self.waiting:
                self._hold(data)
                return
            if self.in_head:
                # A head is fed to the parser no further than the limit, so a header that
                # never ends is never buffered (httptools would keep all of it).
                room = max_head - self.head_fed
                if room <= 0:
                    self._refuse(HeadTooLarge(f"request line and headers exceed {max_head} bytes"))
                    return
            elif self.trailer_fed is not None:
                # What follows a chunk's size line with no data yet may be trailers, which
                # httptools would buffer without bound: fed no further than a head would be.
                room = max_head - self.trailer_fed
                if room <= 0:
                    self._refuse(BadRequest("a request may not carry trailers"))
                    return
            else:
                room = len(data)
            end = self._head_end(data)
            if 0 < end < room:
                room = end
            if len(data) > room:
                piece, data = data[:room], data[room:]
            else:
                piece, data = data, b""
            if self.in_head:
                self.head_fed += len(piece)
            elif self.trailer_fed is not None:
                self.trailer_fed += len(piece)
            self.fed_tail = piece[-3:] if len(piece) >= 3 else (self.fed_tail + piece)[-3:]
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
        self._refuse(RequestTimeout(f"the request body took over {self.limits.body_timeout:g}s"))

    def _head_end(self, data: bytes) -> int:
        """Where the first ``CRLF CRLF`` in ``data`` ends, counting one begun in the last
        piece fed, or -1. (llhttp takes no other end of a head: bare LFs are refused.)"""
        tail = self.fed_tail
        if tail:
            straddled = (tail + data[:3]).find(b"\r\n\r\n")
            if straddled != -1:
                return straddled + 4 - len(tail)
        end = data.find(b"\r\n\r\n")
        return end + 4 if end != -1 else -1

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
                exchange = DirectExchange(
                    cast("Connection", self), scope, keep_alive, expect_continue
                )
                exchange.direct = direct
                self._enqueue(exchange)
                return
        scope["path"] = unquote(raw_path.decode("latin-1"), encoding="latin-1")
        scope["state"] = self.listener.state.copy()
        exchange = AsgiExchange(cast("Connection", self), scope, keep_alive, expect_continue)
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
        listener, size = self.listener, len(body)
        if listener.body_bytes + size > self.limits.max_body_memory:
            self.refusal = BodiesTooLarge(
                "request bodies in progress fill this gateway's memory budget; retry shortly",
                retry_after=self.limits.retry_after,
            )
            raise _Refused
        listener.body_bytes += size
        exchange.counted += size
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
                self._disarm()  # the body's clock
                # Paused for a large body, reading resumes once it is in, so that a client
                # who leaves while its answer is worked on is seen (and the work stops).
                self._resume()

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
