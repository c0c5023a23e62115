"""Cutting a stream into whole SSE events, however the bytes arrive."""

from __future__ import annotations

import random

from cortex.upstream.sse import EventSplitter, split_events

EVENTS = [
    b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
    b"event: ping\ndata: {}\n\n",
    b": a comment\n\n",
    b'data: {"choices": [], "usage": {"prompt_tokens": 3}}\n\n',
    b"data: [DONE]\n\n",
]


def test_whole_events_come_out_as_they_went_in_however_the_stream_is_cut() -> None:
    stream = b"".join(EVENTS) * 3
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 12)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        splitter = EventSplitter()
        out = [splitter.whole(piece) for piece in pieces]
        assert all(part == b"" or part.endswith(b"\n\n") for part in out)
        assert b"".join(out) == stream
        assert splitter.rest() == b""
        assert [e for part in out for e in split_events(part)] == EVENTS * 3


def test_an_unfinished_event_is_held_until_it_ends_or_the_stream_does() -> None:
    splitter = EventSplitter()
    assert splitter.whole(b"data: {") == b""
    assert splitter.whole(b"}\n\ndata: [DO") == b"data: {}\n\n"
    assert splitter.rest() == b"data: [DO"
    assert split_events(b"") == []
