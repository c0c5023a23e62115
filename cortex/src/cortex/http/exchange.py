"""One request on a client connection and its answer: what every kind of answer shares.

The connection parses (:mod:`cortex.http.reader`); an exchange holds one request's
body as it arrives and writes that request's answer. Exactly one exchange of a connection
is answered at a time (pipelined ones wait their turn); only that one is ever cancelled
when the client goes away. What an exchange may do with its connection is :class:`Port`,
and nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from cortex.errors import CortexError
from cortex.http.head import CLOCK, CONTINUE, checked, status_line

HIGH_WATER = 64 * 1024
"""Unread request body above which the connection stops reading from the client."""


class Budget:
    """Bytes of request bodies that the requests in progress hold, under one ``limit``
    (``max_body_memory``), shared by every connection of a listener."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class Port(Protocol):
    """What an exchange uses of its client connection (a
    :class:`~cortex.http.connection.Connection`), and nothing more."""

    loop: asyncio.AbstractEventLoop
    write_paused: bool
    """The client's socket is full: write no more until :meth:`drain` returns."""
    budget: Budget

    def write(self, data: bytes) -> None: ...
    def closing(self) -> bool:
        """Nothing written now would reach the client."""
        ...

    def close(self) -> None: ...
    async def drain(self) -> None: ...
    def want_body(self) -> None:
        """The exchange waits for more of its body: read from the client again."""
        ...

    def finished(self, exchange: Exchange) -> None:
        """``exchange``'s answer has been written in full."""
        ...

    def say(self, error: CortexError) -> None:
        """Answer ``error`` and close (a refusal of the server's own)."""
        ...

    def render(self, error: CortexError) -> bytes:
        """A whole answer for ``error``, as the server renders its own refusals."""
        ...


class Exchange:
    """A request's scope and body as they arrive, and the state of its answer."""

    def __init__(
        self, conn: Port, scope: dict[str, Any], keep_alive: bool, expect_continue: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.body = bytearray()
        self.body_done = False
        self.started = False
        """The answer's head has been written."""
        self.complete = False
        """The whole answer has been written."""
        self.gone = False
        """The client's connection has closed (or was cut by the drain)."""
        self.counted = 0
        """Bytes of body received, counted in the connection's :class:`Budget`."""
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    # The connection's side.

    def start(self) -> None:
        """Begin answering (the connection's turn has come to this exchange)."""
        self.task = self.conn.loop.create_task(self.run())

    async def run(self) -> None:
        raise NotImplementedError

    def received(self) -> None:
        """More of the body came, or all of it, or the client went away."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        """The client's connection closed while this exchange was being answered."""
        self.gone = True
        self.release()
        self.received()

    def release(self) -> None:
        """This request is over: its body no longer counts against ``max_body_memory``."""
        if self.counted:
            self.conn.budget.used -= self.counted
            self.counted = 0

    def cut(self) -> None:
        """The drain ran out of time: end the answer now (the connection closes after)."""
        self.abandon()

    def abandon(self) -> None:
        """Stop answering: nothing more of this exchange is written (the connection says why)."""
        self.gone = True
        self.release()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # The answer's side.

    async def wait_body(self) -> None:
        """Until more of the body comes (or all of it, or the client goes)."""
        self.conn.want_body()
        self._waiter = waiter = self.conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def send_continue(self) -> None:
        """``100 Continue``, once, if the client waits for it before sending the body."""
        if self.expect_continue:
            self.expect_continue = False
            if not self.gone and not self.started:
                self.conn.write(CONTINUE)

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is longer than ``limit`` bytes."""
        self.send_continue()
        while not self.body_done:
            if len(self.body) > limit:
                return None
            if self.gone:
                raise asyncio.CancelledError  # the task is being cancelled anyway
            await self.wait_body()
        if len(self.body) > limit:
            return None
        body = bytes(self.body)
        self.body.clear()
        return body

    def head(self, status: int, headers: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
        """The answer's head; closes the connection after it where the request asks for that.

        An answer written before the request's body was all read (an early 413 or 401) closes
        the connection: the rest of that body must not be taken for the next request, nor
        read and thrown away at the client's pace.

        Raises :class:`~cortex.http.head.InvalidHead` (nothing changes) if a header name or
        value holds a CR or LF, or the head would carry two ``Content-Length``: a bug of the
        app's, never sent.
        """
        keep_alive = self.keep_alive and self.body_done
        parts = [status_line(status)]
        closing = dated = False
        lengths = extra.count(b"content-length:")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
            if name == b"connection" and b"close" in value.lower():
                closing = True
            elif name == b"date":
                dated = True
            elif name == b"content-length":
                lengths += 1
        parts.append(extra)
        lines = 2 + len(headers) + extra.count(b"\n")  # and the status line, the blank one
        if closing:
            keep_alive = False
        elif not keep_alive:
            parts.append(b"connection: close\r\n")
            lines += 1
        if not dated:
            parts.append(CLOCK.date())
            lines += 1
        parts.append(b"\r\n")
        out = b"".join(parts)
        checked(out, lines, lengths)
        self.started = True
        self.expect_continue = False
        self.keep_alive = keep_alive
        return out

    def finish(self) -> None:
        """The whole answer is written: the connection goes on to what comes next."""
        if not self.complete:
            self.complete = True
            self.release()
            self.conn.finished(self)
