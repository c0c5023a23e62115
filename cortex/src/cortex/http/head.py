"""The head of an answer as it goes on the wire: the status line, ``Date``, framing, closing."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from http import HTTPStatus

from cortex.errors import CortexError

STATUS_LINES = {
    int(status): b"HTTP/1.1 %d %s\r\n" % (status, status.phrase.encode()) for status in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class InvalidHead(ValueError):
    """An answer's head that must not be sent (the app's bug): see :func:`checked`."""


def checked(head: bytes, lines: int, lengths: int) -> None:
    """Refuse a head of ``lines`` lines (each ending CRLF) whose names or values held a CR
    or LF of their own (a header split in two, or smuggled), or with ``lengths`` > 1
    ``Content-Length`` headers. Two counts over the head: no per-header scan."""
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise InvalidHead("a header name or value of the answer holds a CR or LF")
    if lengths > 1:
        raise InvalidHead(f"the answer has {lengths} Content-Length headers")


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class Clock:
    """The ``Date`` header line, rendered at most once a second (RFC 9110 wants one per answer)."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._line


CLOCK = Clock()


def framed(data: bytes, chunked: bool) -> bytes:
    """One piece of a streamed body as it goes on the wire (a chunk, unless HTTP/1.0)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data


def error_answer(error: CortexError, *, close: bool = True) -> bytes:
    """A whole answer for a refusal the server itself makes (before any app sees the request).

    The body is the OpenAI error envelope, as for every other error cortex answers.
    """
    body = json.dumps(error.body(anthropic=False)).encode()
    parts = [
        status_line(error.status),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        CLOCK.date(),
    ]
    if error.retry_after is not None:
        parts.append(b"retry-after: %d\r\n" % error.retry_after)
    if close:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)
