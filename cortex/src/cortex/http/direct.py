"""Inference POSTs without ASGI: the app gets the request in one call and hands back a response.

An app with a ``direct`` attribute (:class:`Direct`; cortex's API app has one) gets POSTs to
``direct.paths`` as ``await direct(scope, read)`` and hands back a Starlette response, which
is written straight to the socket: a whole answer in one write, a stream as chunks with the
socket's flow control. An ASGI cycle (message dicts, a ``receive`` per body piece, a second
write for the body) cost about a fifth of cortex's CPU per request.

A stream whose body can push itself (:class:`Pipe`: the relay's streams) is written from the
neuron connection's own callback, piece by piece, with no task woken per piece. When the
client's socket fills up, the stream is told to stop reading from the neuron until it drains.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from starlette.responses import Response, StreamingResponse

from cortex.errors import CortexError
from cortex.http.exchange import Exchange
from cortex.http.head import LAST_CHUNK, framed
from cortex.routes.body import BodyReader

log = logging.getLogger("cortex.http")


class Direct(Protocol):
    """Requests an app answers without ASGI: POSTs to ``paths``."""

    paths: frozenset[str]

    async def __call__(self, scope: dict[str, Any], read: BodyReader) -> Response:
        """The response to the request in ``scope`` (an ASGI HTTP scope); never raises."""
        ...

    def cut(self, scope: dict[str, Any]) -> bytes:
        """The last piece of a stream the drain cuts short: an in-band error event."""
        ...


class Pipe(Protocol):
    """A streamed body that pushes itself: the body iterator of a stream cortex relays."""

    async def pipe(self, send: Callable[[bytes], None]) -> None:
        """Call ``send`` with each piece as it comes (from a callback); return at the end."""
        ...

    def writable(self, yes: bool) -> None:
        """The client's connection can take more (True) or cannot for now (False)."""
        ...


class DirectExchange(Exchange):
    """One inference request: the body read in place, the response written by hand."""

    direct: Direct
    streaming = False
    chunked = False

    async def run(self) -> None:
        try:
            response = await self.direct(self.scope, self.read)
            if isinstance(response, StreamingResponse):
                await self._stream(response)  # which ends it, sent or not
            elif not self.closing():
                self.conn.write(
                    self.head(response.status_code, response.raw_headers) + response.body
                )
                self.finish()
        except asyncio.CancelledError:
            if not self.gone:  # cancelled by the server, not by the client leaving
                raise
        except Exception as exc:
            log.error("error while answering %s", self.scope["path"], exc_info=exc)
            if not self.started and not self.closing():
                self.keep_alive = False
                self.started = True
                self.conn.write(self.conn.render(CortexError("internal error")))
                self.finish()
            else:
                self.conn.close()

    def lost(self) -> None:
        """The client went away: stop working on an answer nobody will read."""
        super().lost()
        if self.task is not None and not self.complete:
            self.task.cancel()

    def closing(self) -> bool:
        """Nothing more may be written: the client has gone, or its connection is closing."""
        return self.gone or self.conn.closing()

    def cut(self) -> None:
        """The drain ran out of time: a stream under way ends with one in-band error event."""
        if self.streaming and not self.closing():
            data = framed(self.direct.cut(self.scope), self.chunked)
            self.conn.write(data + LAST_CHUNK if self.chunked else data)
        super().cut()

    async def _stream(self, response: StreamingResponse) -> None:
        chunked = self.chunked = self.scope["http_version"] == "1.1"
        if not chunked:  # HTTP/1.0 has no chunked encoding: the end of the stream closes
            self.keep_alive = False
        body: Any = response.body_iterator
        pushed = hasattr(body, "pipe")
        conn = self.conn
        try:
            if self.closing():
                return
            conn.write(
                self.head(
                    response.status_code,
                    response.raw_headers,
                    b"transfer-encoding: chunked\r\n" if chunked else b"",
                )
            )
            self.streaming = True
            if pushed:
                await self._pipe(body, chunked)
            else:
                async for piece in body:
                    if not piece:
                        continue
                    await conn.drain()
                    if self.closing():
                        return
                    data = piece if isinstance(piece, bytes) else piece.encode()
                    conn.write(framed(data, chunked))
            if self.closing():
                return
            if chunked:
                conn.write(LAST_CHUNK)
            self.finish()
        finally:
            self.streaming = False
            if not pushed:
                await body.aclose()
            on_close: Callable[[], None] | None = getattr(response, "on_close", None)
            if on_close is not None:
                on_close()

    async def _pipe(self, body: Pipe, chunked: bool) -> None:
        """A stream that pushes itself: each piece is written from the neuron's callback.

        When the client's socket fills up, ``body`` is told to stop (it stops reading from
        the neuron) until it drains; the flow control is the connection's, so a request
        pipelined behind this one does not take it over.
        """
        conn = self.conn
        drained: asyncio.Task[None] | None = None

        async def until_drained() -> None:
            nonlocal drained
            try:
                await conn.drain()  # also returns when the connection is lost
            finally:
                drained = None
            body.writable(True)

        def held_back() -> None:
            nonlocal drained
            if conn.write_paused and drained is None:
                body.writable(False)
                drained = asyncio.ensure_future(until_drained())

        def send(data: bytes) -> None:
            if data and not self.closing():
                conn.write(framed(data, chunked))
                held_back()

        held_back()
        try:
            await body.pipe(send)
        finally:
            if drained is not None:
                drained.cancel()
