"""One kept-alive connection to a neuron: httptools' parser, one answer at a time.

Bytes nobody asked for close it and are told to the pool's ``stray``; the head of each
answer is held to :class:`~cortex.upstream.answer.Limits`. An answer that echoes an earlier
request's :data:`ECHO` (a late second answer) is skipped, and the answer asked for is read
after it; one that echoes a number never sent is refused (:class:`~cortex.upstream.errors.Crossed`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from cortex.upstream.errors import Broken, Crossed, Dropped, OverLimit, WireError

if TYPE_CHECKING:
    from cortex.upstream.answer import Answer
    from cortex.upstream.pool import Pool

ECHO = b"x-cortex-request"
"""Sent with each request, numbered per connection; a neuron that echoes it in the answer
lets cortex skip an answer meant for an earlier request (a late second answer)."""

Stray = Callable[[str], None]
"""Told ``idle``, ``after_answer``, ``late`` or ``crossed`` each time a connection is closed
for bytes nobody asked for."""


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the reason is ``Connection.refused``."""


class Connection(asyncio.Protocol):
    """One connection to a neuron; at most one answer on it at a time.

    Bytes nobody asked for (while it is idle, or after the answer in the same read) close
    it and are reported to ``pool.stray``: an answer is only ever the one asked for on it.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.limits = pool.limits
        self.max_head = pool.limits.head_bytes
        self.max_headers = pool.limits.headers
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
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
        self.sent = 0  # requests sent on it: the x-cortex-request echo
        self.head_read = 0  # bytes read while the answer's head was not complete
        self.head_size = 0  # names and values of its headers
        self.skipping = False  # in a late answer to an earlier request (see on_header)
        self.skipped = 0  # bytes of its body
        self.suspect = False  # it carried such an answer: never reuse it
        self.refused: WireError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        parser = self.parser
        if answer is None or parser is None:
            if self.alive:  # nobody asked: the connection cannot be trusted any more
                self.pool.stray("idle")
                self.drop()
            return
        heading = not answer._head
        if heading:
            self.head_read += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            error, self.refused = self.refused, None
            answer = self.answer
            if isinstance(error, Crossed):
                self.pool.stray("crossed")
            elif answer is None and self.finished:  # garbage after a whole answer
                self.pool.stray("after_answer")
            self.drop()
            if answer is not None:
                answer._fail(error or Broken(f"the neuron's answer is not HTTP: {exc}"))
            return
        if heading and self.head_read > self.max_head:
            answer = self.answer
            if answer is not None and not answer._head:  # and none of it ended in this read
                self.drop()
                answer._fail(OverLimit(f"the answer's head is over {self.max_head} bytes"))
                return
        if self.finished:
            # Only now, with the whole read parsed: bytes after the answer (a second answer
            # in the same read) would otherwise complete another message and pool the
            # connection twice, and two requests would share it and swap answers.
            self.finished = False
            if self.stray:
                self.pool.stray("after_answer")
                self.drop()
            elif self.suspect or not (self.keep_alive and self.delimited and self.alive):
                self.drop()
            else:
                self.resume()
                self.pool.put(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.parser = None  # it holds this connection: a cycle only a full collection frees
        answer, self.answer = self.answer, None
        if answer is None:
            return
        if answer._head and not self.delimited:  # an answer that ends when the connection does
            answer._complete()
        elif answer._begun:
            answer._fail(Broken("the neuron closed the connection mid-answer"))
        else:
            answer._fail(Dropped("the neuron closed the connection without answering"))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        answer = self.answer
        if answer is None:
            self.stray = True
            return
        answer._begun = True
        answer.raw_headers = []
        if not answer._begun_at:
            answer._begun_at = time.monotonic()
            answer._wake()  # its head has head_timeout from now

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head only trailers come: they are dropped, never merged into the
        # headers (RFC 9110 6.5.1), which a whole answer would otherwise pass on as such.
        answer = self.answer
        if answer is None or answer._head or self.skipping:
            return
        name = name.lower()
        headers = answer.raw_headers
        headers.append((name, value))
        size = self.head_size = self.head_size + len(name) + len(value) + 4
        if size > self.max_head or len(headers) > self.max_headers or name == ECHO:
            self._check(answer, name, value)

    def _check(self, answer: Answer, name: bytes, value: bytes) -> None:
        """The rare header: the echo, or one past a limit."""
        if len(answer.raw_headers) > self.max_headers:
            self._refuse(OverLimit(f"the answer has over {self.max_headers} headers"))
        if self.head_size > self.max_head:
            self._refuse(OverLimit(f"the answer's head is over {self.max_head} bytes"))
        if name != ECHO or value == answer.echo:
            return
        if value.isdigit() and int(value) < self.sent:
            # A late answer to an earlier request on this connection: skipped whole, and
            # the one asked for is read after it (then the connection closes).
            self.pool.stray("late")
            self.skipping = self.suspect = True
            answer.raw_headers = []
            return
        self._refuse(Crossed(f"the answer is for request {value!r}, not {answer.echo!r}"))

    def _refuse(self, error: WireError) -> None:
        assert self.answer is not None  # noqa: S101 - only called for an answer's head
        self.answer.raw_headers = []
        self.refused = error
        raise _Refused

    def on_headers_complete(self) -> None:
        assert self.parser is not None  # noqa: S101 - called by it
        status = self.parser.get_status_code()
        self.informational = status < 200
        if self.informational or self.skipping:
            return
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.answer is not None:
            names = {name for name, _ in self.answer.raw_headers}
            self.delimited = b"content-length" in names or b"transfer-encoding" in names
            self.answer._headers_done(status)

    def on_body(self, body: bytes) -> None:
        if self.skipping:
            self.skipped += len(body)
            if self.skipped > self.limits.answer_bytes:
                self.skipping = False
                self._refuse(OverLimit(f"a late answer is over {self.limits.answer_bytes} bytes"))
        elif self.answer is not None:
            self.answer._body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            return
        if self.skipping:  # the late answer ended: the next message is this request's
            self.skipping = False
            self.skipped = self.head_read = self.head_size = 0
            if self.answer is not None:
                self.answer._begun = False
                self.answer._begun_at = 0.0
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
