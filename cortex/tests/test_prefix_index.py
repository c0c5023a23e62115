"""The prefix index: chained hashes of a prompt's pieces → the engines that served them,
bounded per model and in total, evicted least recently used; Unicode and very long prompts
cost what ``chunk_chars`` and ``max_prompt_chars`` allow and no more."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Any

from cortex.fleet.prefix import (
    CHARS_PER_PIECE,
    HELD_PER_ENTRY,
    PrefixIndex,
    anchor_key,
    chain,
    pieces,
    prompt_hashes,
    rendezvous,
)

CHAT = "/v1/chat/completions"


def chat(*contents: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return {"model": "m1", "messages": messages}


def hashes(
    payload: dict[str, Any], path: str = CHAT, chunk: int = 64, limit: int = 10_000
) -> list[int]:
    return prompt_hashes(path, payload, chunk, limit)[0]


def test_the_next_turn_of_a_chat_extends_the_previous_one() -> None:
    one = hashes(chat("hello", system="be brief"))
    two = hashes(chat("hello", "hi there", "and now?", system="be brief"))
    assert len(one) == 2 and len(two) == 3  # an answer is hashed with the question after it
    assert two[:2] == one
    other = hashes(chat("good evening", system="be brief"))
    assert other[0] == one[0] and other[1] != one[1]  # the same system prompt, then not


def test_an_answer_is_hashed_with_the_question_after_it_or_alone_at_the_end() -> None:
    asked = hashes(chat("q1", "a1", "q2"))
    answered = hashes(chat("q1", "a1"))  # a prompt that ends in an answer (a prefill)
    long_next = hashes(chat("q1", "a1", "x" * 200))  # the next message is cut in chunks
    assert len(asked) == 2 and len(answered) == 2 and len(long_next) == 6
    assert asked[0] == answered[0] == long_next[0]
    assert asked[1] != answered[1]  # the answer with the question, or alone
    assert long_next[1] == answered[1]  # the answer alone, then the chunks
    for payload in (chat("q1", "a1", "q2"), chat("q1", "a1"), chat("q1", "a1", "x" * 200)):
        assert prompt_hashes(CHAT, payload, 64, 10_000) == chain(
            pieces(CHAT, payload, 1000)[0], 64, 10_000
        )


def test_a_piece_stands_for_its_whole_prefix() -> None:
    a = hashes(chat("x", "y", "z"))
    b = hashes(chat("w", "y", "z"))  # the same later messages after a different first one
    assert not set(a) & set(b)


def test_roles_and_message_ends_count() -> None:
    as_user = hashes({"messages": [{"role": "user", "content": "ab"}]})
    as_system = hashes({"messages": [{"role": "system", "content": "ab"}]})
    split = hashes(
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    )
    assert as_user != as_system and as_user[-1] != split[-1]


def test_long_messages_are_cut_into_chunks_so_a_shared_document_matches_in_part() -> None:
    document = "0123456789" * 30  # 300 characters: 5 chunks of 64
    a = hashes(chat(document + " question one"))
    b = hashes(chat(document + " question two"))
    assert len(a) == 5
    assert a[:4] == b[:4] and a[4] != b[4]


def test_the_one_pass_chat_hashing_matches_the_general_one() -> None:
    payload = chat("a" * 150, [{"type": "text", "text": "b"}, {"type": "image_url"}], "c")  # type: ignore[arg-type]
    payload["messages"].append({"role": "assistant", "content": None, "tool_calls": []})
    payload["messages"].append({"role": 7, "content": "d"})
    assert prompt_hashes(CHAT, payload, 64, 10_000) == chain(
        pieces(CHAT, payload, 1000)[0], 64, 10_000
    )
    assert prompt_hashes(CHAT, payload, 64, 100) == chain(pieces(CHAT, payload, 1000)[0], 64, 100)


def test_each_hash_says_how_much_of_the_prompt_it_covers() -> None:
    payload = chat("a" * 150, "bb", system="s" * 10)
    assert prompt_hashes(CHAT, payload, 64, 10_000)[1] == [10, 74, 138, 160, 162]
    assert prompt_hashes(CHAT, payload, 64, 100)[1] == [10, 74, 100]
    assert chain(pieces(CHAT, payload, 1000)[0], 64, 100)[1] == [10, 74, 100]
    assert chain([("prompt", "x" * 30)], 64, 20)[1] == [20]


def test_unicode_is_hashed_as_text() -> None:
    emoji = hashes(chat("日本語のテキスト 🚀" * 40))
    again = hashes(chat("日本語のテキスト 🚀" * 40))
    assert emoji == again and len(emoji) == 7  # 440 characters (not bytes) in chunks of 64
    lone = chat("\ud800 a lone surrogate, valid in JSON")  # not encodable as UTF-8
    assert hashes(lone)
    assert isinstance(anchor_key(*pieces(CHAT, lone, 1000), 64), int)


def test_a_very_long_prompt_hashes_at_most_max_prompt_chars() -> None:
    huge = chat("z" * 10_000_000, "more")
    assert len(hashes(huge, chunk=1024, limit=65536)) == 64
    many = {"messages": [{"role": "user", "content": "short"}] * 100_000}
    assert len(hashes(many, chunk=1024, limit=1000)) == 1000 // CHARS_PER_PIECE + 1
    turns = chat(*(["short"] * 100_000))  # question, answer, ...: one piece per turn
    assert len(hashes(turns, chunk=1024, limit=1000)) == (1000 // CHARS_PER_PIECE + 2) // 2


def test_many_tiny_messages_cost_no_more_than_a_long_prompt() -> None:
    empty = {"messages": [{"role": "user", "content": ""}] * 1_000_000}
    assert len(hashes(empty, chunk=1024, limit=65536)) == 65536 // CHARS_PER_PIECE + 1
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 10**6}]}
    assert len(pieces(CHAT, parts, 100)[0][0][1]) == 199  # 100 parts and their separators
    responses = {"input": [{"role": "user", "content": "q"}] * 10**6}
    assert len(pieces("/v1/responses", responses, 100)[0]) == 100


def test_other_endpoints_and_shapes() -> None:
    completion = pieces("/v1/completions", {"prompt": "once upon a time"}, 1000)
    assert completion == ([("prompt", "once upon a time")], 1)
    assert pieces("/v1/completions", {"prompt": ["first", "second"]}, 1000)[0] == [
        ("prompt", "first")
    ]
    assert pieces("/v1/completions", {"prompt": [1, 2, 3]}, 1000) == ([], 0)  # token ids: by load
    messages = pieces(
        "/v1/messages", {"system": "sys", "messages": [{"role": "user", "content": "q"}]}, 1000
    )
    assert messages == ([("system", "sys"), ("user", "q")], 2)
    responses = pieces("/v1/responses", {"instructions": "sys", "input": "q"}, 1000)
    assert responses == ([("system", "sys"), ("user", "q")], 2)
    assert pieces("/v1/embeddings", {"input": "text"}, 1000) == ([], 0)
    assert pieces(CHAT, {"messages": "not a list"}, 1000) == ([], 0)
    assert pieces(CHAT, {"messages": ["not an object"]}, 1000) == ([], 0)


def test_the_anchor_is_the_conversation_up_to_its_first_user_message() -> None:
    first = pieces(CHAT, chat("hello", system="sys"), 1000)
    later = pieces(CHAT, chat("hello", "hi", "more", system="sys"), 1000)
    assert first[1] == later[1] == 2
    assert anchor_key(*first, 64) == anchor_key(*later, 64)
    assert anchor_key(*first, 64) != anchor_key(*pieces(CHAT, chat("bye", system="sys"), 1000), 64)


def test_rendezvous_and_the_anchor_are_the_same_in_every_process() -> None:
    """Replicas must agree; Python's own ``hash`` is salted per process, these are not."""
    code = (
        "from cortex.fleet.prefix import anchor_key, pieces, rendezvous;"
        "p = pieces('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'hé'}]}, 1000);"
        "print(anchor_key(*p, 64), rendezvous(anchor_key(*p, 64), 'n1'))"
    )
    here = pieces(CHAT, {"messages": [{"role": "user", "content": "hé"}]}, 1000)
    mine = f"{anchor_key(*here, 64)} {rendezvous(anchor_key(*here, 64), 'n1')}"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == mine.split()


def test_rendezvous_spreads_conversations_evenly() -> None:
    winners = [max(("n1", "n2"), key=functools.partial(rendezvous, k)) for k in range(1000)]
    assert 400 < winners.count("n1") < 600


def test_lookup_finds_the_deepest_known_piece_and_who_served_it() -> None:
    index = PrefixIndex(per_model=100, total=1000)
    turn1 = hashes(chat("hello", system="sys"))
    turn2 = hashes(chat("hello", "hi", "more", system="sys"))
    assert index.lookup("m1", turn2) == {}
    index.record("m1", turn1, "n1")
    assert index.lookup("m1", turn2) == {"n1": 2}
    index.record("m1", hashes(chat("other", system="sys")), "n2")
    assert index.lookup("m1", turn2) == {"n1": 2, "n2": 1}  # the system prompt is both's
    assert index.lookup("m1", hashes(chat("new", system="sys"))) == {"n1": 1, "n2": 1}
    assert index.lookup("m2", turn2) == {}  # per model


def test_an_entry_remembers_a_few_engines_most_recent_first() -> None:
    index = PrefixIndex(per_model=100, total=1000)
    shared = hashes(chat(system="sys"))
    for name in ("n1", "n2", "n3", "n4", "n5", "n2"):
        index.record("m1", shared, name)
    held = index.lookup("m1", shared)
    assert held == {"n2": 1, "n5": 1, "n4": 1, "n3": 1} and len(held) == HELD_PER_ENTRY


def test_bounded_per_model_evicting_the_least_recently_used() -> None:
    index = PrefixIndex(per_model=10, total=1000)
    old = hashes(chat("old conversation"))
    index.record("m1", old, "n1")
    for i in range(20):
        index.record("m1", hashes(chat(f"conversation {i}")), "n2")
        if i % 3 == 0:
            index.record("m1", old, "n1")  # used again: kept
    assert index.entries("m1") == 10 and len(index) == 10
    assert index.lookup("m1", old) == {"n1": 1}
    assert index.lookup("m1", hashes(chat("conversation 0"))) == {}


def test_deep_pieces_go_before_the_shallow_ones_they_extend() -> None:
    index = PrefixIndex(per_model=3, total=1000)
    index.record("m1", hashes(chat("a", "b", "c")), "n1")
    index.record("m1", hashes(chat("z")), "n2")  # one more than fits: evicts one
    assert index.lookup("m1", hashes(chat("a", "b", "c"))) == {"n1": 2}


def test_bounded_in_total_evicting_from_the_model_used_least_recently() -> None:
    index = PrefixIndex(per_model=1000, total=50)
    for i in range(40):
        index.record("cold", hashes(chat(f"c{i}")), "n1")
    for i in range(40):
        index.record("hot", hashes(chat(f"h{i}")), "n1")
    assert len(index) == 50
    assert index.entries("hot") == 40 and index.entries("cold") == 10
    for i in range(60):
        index.record("hot", hashes(chat(f"again {i}")), "n1")
    assert index.entries("cold") == 0 and len(index) == 50  # an emptied model is dropped
    index.forget("hot")
    assert len(index) == 0


def test_memory_stays_bounded_under_any_traffic() -> None:
    index = PrefixIndex(per_model=500, total=800)
    for i in range(5000):
        index.record(f"m{i % 3}", hashes(chat(f"user {i}", "x" * (i % 700))), f"n{i % 5}")
        assert len(index) <= 800
        assert all(index.entries(f"m{j}") <= 500 for j in range(3))


def test_forgetting_one_engine_keeps_what_the_others_hold() -> None:
    index = PrefixIndex(per_model=1000, total=1000)
    shared = hashes(chat("hi", system="sys"))
    index.record("m1", shared, "n1")
    index.record("m1", shared, "n2")
    mine = hashes(chat("hi", "hello", "more", system="sys"))
    index.record("m1", mine, "n1")
    index.record("m2", shared, "n1")
    size = len(index)
    index.forget("m1", "n1")
    assert index.lookup("m1", mine) == {"n2": 2}  # n1's own pieces are gone, shared ones n2's
    assert index.entries("m1") == 2 and len(index) == size - 1
    assert index.lookup("m2", shared) == {"n1": 2}  # per model
    index.forget("m1", "n2")
    assert index.entries("m1") == 0 and "m1" not in index.models() and len(index) == 2
    index.forget("m9", "n1")  # nothing known: nothing to do
