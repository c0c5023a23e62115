"""Token counts of a whole (non-streaming) answer come from its usage, found without parsing it all."""

from __future__ import annotations

import json

import pytest

from cortex.upstream.sse import answer_usage

OPENAI = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"message": {"role": "assistant", "content": 'say "usage": 3'}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}
ANTHROPIC = {
    "id": "m1",
    "type": "message",
    "content": [{"type": "tool_use", "name": "meter", "input": {"usage": {"input_tokens": 999}}}],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 3, "output_tokens": 4},
}


@pytest.mark.parametrize("indent", [None, 2])
def test_the_top_level_usage_is_found(indent: int | None) -> None:
    assert answer_usage(json.dumps(OPENAI, indent=indent).encode()) == OPENAI["usage"]


def test_a_usage_inside_the_content_does_not_count() -> None:
    # A tool input is an object, so its "usage" key is a real key; the answer's own comes last.
    assert answer_usage(json.dumps(ANTHROPIC).encode()) == {"input_tokens": 3, "output_tokens": 4}


def test_usage_as_a_value_is_skipped() -> None:
    body = b'{"usage": {"prompt_tokens": 2}, "kind": "usage"}'
    assert answer_usage(body) == {"prompt_tokens": 2}


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "choices": []}',
        b'{"usage": {"prompt_tokens": 2',
        b'{"usage": nope}',
        b'{"usage": "\xff"}',
        b"",
    ],
)
def test_no_usable_usage_is_none(body: bytes) -> None:
    assert answer_usage(body) is None


def test_a_null_usage_is_none_and_a_real_one_matches_a_full_parse() -> None:
    body = json.dumps(OPENAI | {"usage": None}).encode()
    assert answer_usage(body) is None
    assert answer_usage(json.dumps(OPENAI).encode()) == json.loads(json.dumps(OPENAI))["usage"]
