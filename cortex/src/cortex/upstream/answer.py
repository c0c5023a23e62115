"""One answer from a neuron, as the wire client hands it to the relay, and its limits.

The connection (:mod:`cortex.upstream.connection`) feeds it; the relay reads it whole
(:meth:`Answer.read`), as it comes (:meth:`Answer.iter_any`), or has it pushed
(:meth:`Answer.push`). See :mod:`cortex.upstream.wire` for the guarantees.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cortex.upstream.errors import OverLimit, ReadTimeout

if TYPE_CHECKING:
    from cortex.settings import Gateway as GatewaySettings
    from cortex.upstream.connection import Connection

HIGH_WATER = 64 * 1024
"""Bytes an answer buffers for a relay that has not taken them yet before reading pauses."""


@dataclass(frozen=True)
class Limits:
    """What one answer may cost cortex; past any of them the answer fails and its connection
    closes (see :class:`OverLimit`)."""

    head_bytes: int = 64 * 1024
    """The status line and headers."""
    headers: int = 100
    head_timeout: float = 10.0
    """Seconds from the first byte of a head to its end (silence before it is ``idle``)."""
    answer_bytes: int = 64 * 1024 * 1024
    """A whole answer's body, as :meth:`Answer.read` gathers it (streams are not gathered)."""
    answer_timeout: float = 60.0
    """Seconds from a whole answer's head to the end of its body."""

    @classmethod
    def of(cls, gateway: GatewaySettings) -> Limits:
        return cls(
            head_bytes=gateway.upstream_max_head_bytes,
            headers=gateway.upstream_max_headers,
            head_timeout=gateway.upstream_head_timeout,
            answer_bytes=gateway.upstream_max_answer_bytes,
            answer_timeout=gateway.upstream_answer_timeout,
        )


class Answer:
    """One answer: ``status`` and ``headers`` are set when :meth:`Upstream.post` returns."""

    def __init__(self, conn: Connection, idle: float, limits: Limits, echo: bytes) -> None:
        self._conn: Connection | None = conn
        self._idle = idle
        self._limits = limits
        self.echo = echo
        """This request's ``x-cortex-request`` value."""
        self._loop = conn.loop
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        """As received, with names in lower case."""
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._begun = False  # a byte of the answer arrived
        self._begun_at = 0.0  # when (set and the waiter woken for the first head only)
        self._head = False
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Pushed (see push): where the pieces go, and who hears of the end.
        self._to: Callable[[bytes], None] | None = None
        self._ended: Callable[[BaseException | None], None] | None = None
        self._last = 0.0  # when the last piece came, or reading resumed
        self._timer: asyncio.TimerHandle | None = None

    # -- fed by the connection

    def _headers_done(self, status: int) -> None:
        self.status = status
        self._head = True
        self._wake()

    @property
    def is_event_stream(self) -> bool:
        """Whether the answer is Server-Sent Events (a stream to relay as it comes)."""
        for name, value in self.raw_headers:
            if name == b"content-type":
                return value.startswith(b"text/event-stream")
        return False

    def _body(self, data: bytes) -> None:
        if self._to is not None:
            self._last = time.monotonic()
            self._deliver(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._conn = None  # back in the pool (or closed): no longer this answer's
        self._wake()
        self._end(None)

    def _fail(self, error: BaseException) -> None:
        self._conn = None
        if not self._head:
            # Nobody will see a broken head; and ``error`` will hold this answer (through
            # its traceback) in a cycle that only a full collection frees.
            self.raw_headers = []
        if not self._done and self._error is None:
            self._error = error
        self._wake()
        self._end(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the relay

    async def _wait(self, until: float = 0.0, late: str = "") -> None:
        """Until the connection has news for this answer, or ``idle`` seconds pass.

        With ``until`` (a monotonic time) sooner than that, :class:`OverLimit` with ``late``
        as its message is raised then instead.
        """
        waiter = self._waiter = self._loop.create_future()
        left = until - time.monotonic() if until else self._idle
        if left < self._idle:
            timer = self._loop.call_later(left, _late, waiter, late)
        else:
            timer = self._loop.call_later(self._idle, _expire, waiter, self._idle)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _await_head(self) -> None:
        limit = self._limits.head_timeout
        while not self._head:
            if self._error is not None:
                raise self._error
            if self._begun_at:  # a head is coming: it has head_timeout to end
                await self._wait(self._begun_at + limit, f"the answer's head took over {limit:g}s")
            else:
                await self._wait()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever is buffered, joined, each time."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    async def read(self) -> bytes:
        """The whole body (what :meth:`iter_any` gives, without a generator per answer).

        At most ``answer_bytes`` of it, within ``answer_timeout`` of the call: past either,
        :class:`OverLimit`, and the connection is closed.
        """
        limits = self._limits
        if self._done and self._error is None:  # the usual case: all of it came with the head
            data = self._take() if self._chunks else b""
            if len(data) > limits.answer_bytes:
                raise OverLimit(f"the answer is over {limits.answer_bytes} bytes")
            return data
        for name, value in self.raw_headers:
            if name == b"content-length" and value.isdigit() and int(value) > limits.answer_bytes:
                self.close()
                raise OverLimit(f"the answer is {int(value)} bytes, over {limits.answer_bytes}")
        parts: list[bytes] = []
        size = 0
        until = time.monotonic() + limits.answer_timeout
        while True:
            if self._chunks:
                part = self._take()
                size += len(part)
                if size > limits.answer_bytes:
                    parts.clear()
                    self.close()
                    raise OverLimit(f"the answer is over {limits.answer_bytes} bytes")
                parts.append(part)
            elif self._done:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            elif self._error is not None:
                raise self._error
            else:
                try:
                    await self._wait(until, f"the answer took over {limits.answer_timeout:g}s")
                except OverLimit:
                    self.close()
                    raise

    def _take(self) -> bytes:
        """Everything buffered, joined; reading resumes if it paused for the buffer."""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    def close(self) -> None:
        """Drop the connection unless the answer is complete (then it is already pooled).

        A pushed answer stops there: ``ended`` is not called.
        """
        self._to = self._ended = None
        if self._timer is not None:
            self._timer.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop()

    release = close  # an unread answer cannot leave its connection reusable either

    # -- pushed

    def push(
        self, data: Callable[[bytes], None], ended: Callable[[BaseException | None], None]
    ) -> None:
        """From now on, call ``data`` with each piece of the body as it arrives, then ``ended``.

        ``data`` runs inside the connection's ``data_received``; what it raises ends the
        answer (the connection is dropped). ``ended`` is called once: with None when the
        answer is complete, else with the error (:class:`ReadTimeout` when nothing came for
        ``idle`` seconds while not paused, :class:`Broken`, or what ``data`` raised). Pieces
        buffered before this call go to ``data`` at once.
        """
        self._to, self._ended = data, ended
        self._last = time.monotonic()
        if self._chunks:
            self._deliver(self._take())
        if self._done:
            self._end(None)
        elif self._error is not None:
            self._end(self._error)
        elif self._ended is not None:
            self._timer = self._loop.call_later(self._idle, self._tick)

    def pause(self) -> None:
        """Stop reading from the neuron (the reader of a pushed answer cannot keep up)."""
        if self._conn is not None:
            self._conn.pause()

    def resume(self) -> None:
        if self._conn is not None:
            self._last = time.monotonic()  # silence while paused is not the neuron's
            self._conn.resume()

    def _deliver(self, data: bytes) -> None:
        assert self._to is not None  # noqa: S101 - only called while pushing
        try:
            self._to(data)
        except Exception as exc:
            self._abort(exc)

    def _abort(self, error: BaseException) -> None:
        """End a pushed answer on cortex's side: drop the connection, then report ``error``."""
        ended = self._ended
        self.close()
        if ended is not None:
            ended(error)

    def _end(self, error: BaseException | None) -> None:
        ended = self._ended
        if ended is None:
            return
        self._to = self._ended = None
        if self._timer is not None:
            self._timer.cancel()
        ended(error)

    def _tick(self) -> None:
        """The idle timer of a pushed answer: one per answer, set again as pieces come."""
        if self._ended is None:
            return
        now = time.monotonic()
        if self._conn is not None and self._conn.paused:
            due = now + self._idle
        else:
            due = self._last + self._idle
            if due <= now:
                self._abort(ReadTimeout(f"nothing for {self._idle:g}s"))
                return
        self._timer = self._loop.call_later(due - now, self._tick)


def _expire(waiter: asyncio.Future[None], idle: float) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"nothing for {idle:g}s"))


def _late(waiter: asyncio.Future[None], message: str) -> None:
    if not waiter.done():
        waiter.set_exception(OverLimit(message))
