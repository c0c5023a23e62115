"""Server-sent-event helpers for the relay: whole events, usage, the injected usage chunk."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

USAGE = b'"usage"'
_DECODER = json.JSONDecoder()


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0

    def add(self, usage: Any) -> None:
        """Take counts from an OpenAI (``prompt_tokens``) or Anthropic (``input_tokens``) usage."""
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        # Counts feed Prometheus counters, which raise on a negative increment: a neuron's
        # junk (a negative, a float, a bool) is left out, never allowed to fail the request.
        if type(prompt) is int and prompt > 0:
            self.prompt = prompt
        if type(completion) is int and completion > 0:
            self.completion = completion


class EventTooLarge(Exception):
    """An SSE event went over ``max_bytes``, or took over ``max_seconds`` to end."""


class EventSplitter:
    """Cuts a byte stream into whole SSE events (each ending in a blank line).

    The relay forwards whole events only: a partial event is held until its end arrives
    (it is useless to a client anyway), which lets one event be inspected or dropped
    without ever re-serialising it. A blank line is ``\\n\\n``, ``\\r\\n\\r\\n`` or
    ``\\r\\r``: SSE allows all three line ends, and a server framing with CRLF must not
    have its stream held back until it ends.

    Linear in the bytes received: a held event's pieces are kept in a list and joined
    once, when it ends; each piece is searched once (with the three bytes before it, for
    a blank line cut between two pieces). A held event over ``max_bytes``, or held for
    over ``max_seconds`` since its first piece, raises :class:`EventTooLarge`.
    """

    def __init__(self, max_bytes: int = 8 * 1024 * 1024, max_seconds: float = 60.0) -> None:
        self._held: list[bytes] = []
        self._tail = b""  # the last three bytes held
        self._size = 0
        self._since = 0.0
        self._max_bytes = max_bytes
        self._max_seconds = max_seconds

    def whole(self, chunk: bytes) -> bytes:
        """The whole events that ``chunk`` completes, as one run of bytes; the rest is held."""
        held = self._held
        if not held:
            if chunk.endswith(b"\n\n"):  # the usual case: the chunk ends with its event
                return chunk
            end = last_end(chunk)
            if end == len(chunk):
                return chunk
            if end:
                self._hold(chunk[end:])
                return chunk[:end]
            self._hold(chunk)
            return b""
        tail = self._tail
        end = last_end(tail + chunk) - len(tail)
        if end <= 0:  # no end of an event in it
            self._hold(chunk)
            return b""
        held.append(chunk[:end])
        data = b"".join(held)
        held.clear()
        self._tail = b""
        self._size = 0
        if end < len(chunk):
            self._hold(chunk[end:])
        return data

    def _hold(self, piece: bytes) -> None:
        now = time.monotonic()
        if not self._held:
            self._since = now
        self._held.append(piece)
        self._tail = (self._tail + piece)[-3:] if len(piece) < 3 else piece[-3:]
        self._size += len(piece)
        if self._size > self._max_bytes:
            self.rest()
            raise EventTooLarge(f"an event is over {self._max_bytes} bytes")
        if now - self._since > self._max_seconds:
            self.rest()
            raise EventTooLarge(f"an event took over {self._max_seconds:g}s to end")

    def rest(self) -> bytes:
        rest = b"".join(self._held)
        self._held.clear()
        self._tail = b""
        self._size = 0
        return rest


BLANK_LINES = (b"\n\n", b"\r\n\r\n", b"\r\r")
_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)", re.DOTALL)


def last_end(data: bytes) -> int:
    """Where the last whole event in ``data`` ends (0: none does)."""
    end = 0
    for blank in BLANK_LINES:
        at = data.rfind(blank)
        if at >= 0:
            end = max(end, at + len(blank))
    return end


def split_events(data: bytes) -> list[bytes]:
    """``data`` (whole events) cut into its events, each with its own blank line."""
    return [match.group() for match in _EVENT.finditer(data)]


def event_payload(event: bytes) -> Any:
    """The JSON of an event's ``data:`` line, or None."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data.startswith(b"{"):
                try:
                    return json.loads(data)
                except (ValueError, RecursionError):
                    return None
    return None


def answer_usage(data: bytes) -> Any:
    """The ``usage`` object of a whole JSON answer, without parsing the rest of the answer.

    A JSON string cannot hold an unescaped quote, so ``"usage"`` followed by a colon is a key.
    The last such key is taken: OpenAI, vLLM and Anthropic answers put their top-level
    ``usage`` after the content, so a tool input with a ``usage`` field of its own (an object
    inside ``content``) comes before it. None when there is no usage or it is not valid JSON.
    """
    at = data.rfind(USAGE)
    while at >= 0:
        rest = data[at + len(USAGE) :].lstrip()
        if rest.startswith(b":"):
            try:
                text = rest[1:].decode()
                return _DECODER.raw_decode(text, len(text) - len(text.lstrip()))[0]
            except (ValueError, RecursionError):  # also UnicodeDecodeError
                return None
        at = data.rfind(USAGE, 0, at)
    return None


def is_usage_only(payload: Any) -> bool:
    """The final OpenAI chunk that ``stream_options.include_usage`` adds: no choices, usage."""
    return (
        isinstance(payload, dict)
        and payload.get("choices") == []
        and payload.get("usage") is not None
    )
