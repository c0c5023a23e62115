"""Cutting a stream into whole SSE events, however the bytes arrive."""

from __future__ import annotations

import random
import time

import pytest

from cortex.upstream.sse import EventSplitter, EventTooLarge, split_events

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


def test_crlf_and_cr_framed_events_come_out_whole_however_the_stream_is_cut() -> None:
    events = [e.replace(b"\n\n", gap) for e in EVENTS for gap in (b"\r\n\r\n", b"\r\r", b"\n\n")]
    stream = b"".join(events)
    rng = random.Random(11)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 40)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        splitter = EventSplitter()
        out = [splitter.whole(piece) for piece in pieces]
        assert b"".join(out) == stream
        assert splitter.rest() == b""
        assert [e for part in out for e in split_events(part)] == events


def test_splitting_is_linear_in_the_bytes_received() -> None:
    # One event of 6 MiB arriving in 1 KiB pieces: copying and searching what is held on
    # every piece (as before issue 20) does about 6,000 x 3 MiB of work, minutes here.
    splitter = EventSplitter()
    piece = b"x" * 1024
    started = time.process_time()
    for _ in range(6 * 1024):
        assert splitter.whole(piece) == b""
    assert len(splitter.whole(b"\n\n")) == 6 * 1024 * 1024 + 2
    assert time.process_time() - started < 1.0


def test_an_event_over_the_size_limit_fails_and_nothing_is_held() -> None:
    splitter = EventSplitter(max_bytes=64 * 1024)
    assert splitter.whole(b"data: 1\n\n" + b"y" * 60_000) == b"data: 1\n\n"
    with pytest.raises(EventTooLarge, match="over 65536 bytes"):
        splitter.whole(b"y" * 8_000)
    assert splitter.rest() == b""


def test_an_event_that_takes_too_long_to_end_fails() -> None:
    splitter = EventSplitter(max_seconds=0.2)
    splitter.whole(b"data: ")
    time.sleep(0.25)
    with pytest.raises(EventTooLarge, match=r"took over 0.2s"):
        splitter.whole(b"1")
