"""Reading requests off the wire: httptools' parser, fed within bounds a client cannot pass.

Owns the head of each request as it arrives and the scope it becomes; what a request is
then given to, and in what order it is answered, is the connection's (:class:`Sink`). Kept
apart because it changes with HTTP's framing and llhttp's behaviour, not with how a
connection lives or waits.

- The head of a request (request line and headers) is bounded as it arrives: no more than
  ``max_header_bytes`` of it is ever fed to the parser, and no URL, header name or value may
  pass ``max_header_field_bytes``. Either way the answer is 431 and the connection closes.
- At most one request is parsed ahead of the one being answered: each piece fed to the
  parser ends at the first end of a head in it, and once a request waits, the rest is
  handed back unparsed (:meth:`Sink.hold`).
- A chunked request body may not end with trailers: 400, and the connection closes. They
  would come after the app has the request's headers, and no more than ``max_header_bytes``
  of them is read.
- An offer to upgrade (``Upgrade: h2c`` from ``curl --http2``) is declined by ignoring it:
  the request, body and all, is answered over HTTP/1.1.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httptools

from cortex.errors import BadRequest, CortexError, HeadTooLarge
from cortex.http.limits import Limits

log = logging.getLogger("cortex.http")

ASGI = {"version": "3.0", "spec_version": "2.4"}


class Sink(Protocol):
    """What the reader hands each request to, as it is read (the connection)."""

    def queued(self) -> bool:
        """A request waits behind the one being answered: parse nothing more for now."""
        ...

    def hold(self, data: bytes) -> None:
        """Keep ``data`` unparsed until the waiting request's turn comes."""
        ...

    def head_begun(self) -> None: ...
    def request(
        self, scope: dict[str, Any], raw_path: bytes, keep_alive: bool, expect_continue: bool
    ) -> None:
        """A request's head is read (``scope`` is its ASGI scope, ``path`` not yet set)."""
        ...

    def body(self, data: bytes) -> CortexError | None:
        """A piece of the last request's body; an error refuses that request."""
        ...

    def complete(self) -> None:
        """The last request's body is all read."""
        ...

    def refuse(self, error: CortexError) -> None:
        """The bytes cannot be read as requests: answer ``error``; nothing more is fed."""
        ...


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the reason is on the connection."""


class RequestReader:
    """The parser of a connection's requests and the head being parsed (see the module)."""

    def __init__(
        self,
        sink: Sink,
        limits: Limits,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> None:
        self.sink = sink
        self.limits = limits
        self.client = client
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.refusal: CortexError | None = None
        """Why a callback stopped the parser (raised as ``_Refused``)."""
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
        self.body_left: int | None = None
        """What is still to come of a body of declared length (None: none, or chunked)."""

    def feed(self, data: bytes) -> None:
        """Parse ``data``, stopping once a request waits behind the one being answered.

        Each piece fed to the parser ends at the first end of a head (``CRLF CRLF``) in it,
        so at most one request completes per piece: once one is queued, the rest is held
        unparsed (and reading pauses past ``HIGH_WATER``) until its turn comes. Without
        this, one read of pipelined requests became thousands of queued exchanges.
        """
        max_head = self.limits.max_header_bytes
        sink = self.sink
        while data:
            if sink.queued():
                sink.hold(data)
                return
            if self.in_head:
                # A head is fed to the parser no further than the limit, so a header that
                # never ends is never buffered (httptools would keep all of it).
                room = max_head - self.head_fed
                if room <= 0:
                    sink.refuse(HeadTooLarge(f"request line and headers exceed {max_head} bytes"))
                    return
            elif self.trailer_fed is not None:
                # What follows a chunk's size line with no data yet may be trailers, which
                # httptools would buffer without bound: fed no further than a head would be.
                room = max_head - self.trailer_fed
                if room <= 0:
                    sink.refuse(BadRequest("a request may not carry trailers"))
                    return
            elif self.body_left is not None:
                # A body of declared length is fed whole, and no further: what follows it
                # is the next head. (Cut at every CRLF CRLF instead, a body made of them
                # would cost a parser call per 4 bytes.)
                room = self.body_left if self.body_left > 0 else len(data)
            else:
                room = len(data)
            if self.in_head or self.body_left is None:
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
        cause = exc.__context__  # (httptools chains what a callback raised as the context)
        if cause is not None and not isinstance(cause, _Refused):
            log.error("error parsing a request from %s", self.client, exc_info=cause)
        self.sink.refuse(self.refusal or BadRequest(f"invalid HTTP request: {exc}"))

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.resuming:
            return
        self.head_began = True
        self.head_parsed = 0
        self.url = b""
        self.headers = []
        self.sink.head_begun()

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
        parser = self.parser
        if parser.should_upgrade():
            self.upgrading = True
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self.refusal = BadRequest("invalid request target")
            raise _Refused from None
        version = parser.get_http_version()
        raw_path: bytes = url.path or b"/"  # ``GET http://host HTTP/1.1`` has none
        expect_continue = chunked = False
        length = b""
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect":
                expect_continue = version == "1.1" and value.lower() == b"100-continue"
        # (llhttp has refused a length that is not digits, two lengths, and length + chunked)
        self.body_left = int(length) if length.isdigit() and not chunked else None
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI,
            "http_version": version,
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "root_path": "",
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": self.headers,
            "client": self.client,
            "server": self.server,
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        self.sink.request(scope, raw_path, keep_alive, expect_continue)

    def on_chunk_header(self) -> None:
        self.trailer_fed = 0

    def on_chunk_complete(self) -> None:
        self.trailer_fed = None

    def on_body(self, body: bytes) -> None:
        self.trailer_fed = None
        if self.body_left is not None:
            self.body_left -= len(body)
        error = self.sink.body(body)
        if error is not None:
            self.refusal = error
            raise _Refused

    def on_message_complete(self) -> None:
        if self.upgrading:  # the body (if any) comes after the upgrade offer is declined
            return
        self.in_head = True
        self.head_fed = 0
        self.trailer_fed = None
        self.body_left = None
        self.sink.complete()

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
