"""The ASGI side of cortex's server: requests for every route but the direct ones, and lifespan.

A small bridge, to ASGI 3 (HTTP spec 2.4): ``http.request`` messages carry the body as it
arrives, ``http.disconnect`` comes once the client has gone or the answer is complete, a
``send`` after the client has gone raises :class:`ClientGone` (an ``OSError``), and
the answer's ``http.response.start`` is held until its first body message, so that a whole
answer goes out in one write with a ``Content-Length``. An answer of unknown length is
chunked (HTTP/1.1) or ended by closing the connection (HTTP/1.0). ``HEAD`` answers and
1xx/204/304 carry no body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cortex.errors import CortexError
from cortex.http.exchange import Exchange
from cortex.http.head import LAST_CHUNK, framed

log = logging.getLogger("cortex.http")


class ClientGone(OSError):
    """Raised by ``send`` once the client has gone (ASGI HTTP spec 2.4)."""


class AsgiExchange(Exchange):
    """One request answered by the ASGI app."""

    app: Any
    _status = 0
    _headers: list[tuple[bytes, bytes]]
    _chunked = False
    _bodiless = False
    _sent_body = False
    _flush: asyncio.Handle | None = None

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.gone:
                raise
        except Exception as exc:
            if self.gone or isinstance(exc, ClientGone):
                return  # a send after the client left, or while its connection closes
            log.error("error in the app on %s", self.scope["path"], exc_info=exc)
            self._broken()
        else:
            if not self.complete and not self.gone:
                if self.started:  # the app returned in the middle of its answer
                    log.error("the app left its answer to %s unfinished", self.scope["path"])
                self._broken()

    def lost(self) -> None:
        """The client went away. An answer under way is cancelled, so that a stream stops at
        once (and not at its next piece); an app still working on its answer learns it from
        ``receive``.
        """
        super().lost()
        if self.started and not self.complete and self.task is not None:
            self.task.cancel()

    def _broken(self) -> None:
        """The app failed: 500 if nothing was sent yet, else the connection is cut."""
        if self.started or self.gone or self.conn.closing():
            self.conn.close()
            return
        self.keep_alive = False
        self.started = True
        self.conn.write(self.conn.render(CortexError("internal error")))
        self.finish()

    async def receive(self) -> dict[str, Any]:
        self.send_continue()
        while not self.gone and not self.complete:
            if self.body or (self.body_done and not self._sent_body):
                body = bytes(self.body)
                self.body.clear()
                self._sent_body = self.body_done
                return {"type": "http.request", "body": body, "more_body": not self.body_done}
            await self.wait_body()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.gone:
            raise ClientGone("the client has gone")
        if not self._status:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind}")
            self._status = message["status"]
            self._headers = [
                (bytes(name).lower(), bytes(value)) for name, value in message.get("headers", ())
            ]
            # The head waits for the first body message, to go out in the same write, but no
            # longer than the app takes to send it without waiting for anything else.
            self._flush = self.conn.loop.call_soon(self._head_alone)
            return
        if kind != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {kind}")
        if self.complete:
            raise RuntimeError("http.response.body after the answer was complete")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = self.conn
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await conn.drain()
        if self.gone or conn.closing():
            raise ClientGone("the client has gone")
        out = b""
        if not self.started:
            out = self._head(body, more)
        if body and not self._bodiless:
            out += framed(body, self._chunked)
        if not more and self._chunked:
            out += LAST_CHUNK
        if out:
            conn.write(out)
        if not more:
            self.finish()

    def _head_alone(self) -> None:
        """The app is taking its time over the first piece of the body: send the head now."""
        self._flush = None
        if not self.started and not self.gone and not self.conn.closing():
            self.conn.write(self._head(b"", more=True))

    def _head(self, body: bytes, more: bool) -> bytes:
        status, headers = self._status, self._headers
        no_body = status < 200 or status in (204, 304)
        head_only = self.scope["method"] == "HEAD"
        self._bodiless = no_body or head_only
        names = {name for name, _ in headers}
        extra = b""
        if b"transfer-encoding" in names:
            self._chunked = not head_only and any(
                b"chunked" in value.lower()
                for name, value in headers
                if name == b"transfer-encoding"
            )
        elif b"content-length" not in names and not no_body:
            if not more:  # (for HEAD: the length a GET's body would have)
                extra = b"content-length: %d\r\n" % len(body)
            elif head_only:
                pass
            elif self.scope["http_version"] == "1.1":
                self._chunked = True
                extra = b"transfer-encoding: chunked\r\n"
            else:  # HTTP/1.0: the end of the answer is the end of the connection
                self.keep_alive = False
        return self.head(status, headers, extra)
