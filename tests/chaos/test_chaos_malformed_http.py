"""A malformed-HTTP corpus sent to cortex's API port (issue 14, items 1, 5, 6, 7): each
request gets a definite answer, the expected 4xx or a clean close, within a bound: never a
hang, never a 500. After each, cortex still serves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from chaos_support import CortexProcess, NeuronProcess, cortex, exchange, neuron, nonce

MAX_BODY = 1024 * 1024
"""``gateway.max_body_bytes`` for this module (an existing key)."""
FIELD = 16 * 1024
"""``gateway.max_header_field_bytes``' default: one header name or value, or the URL."""
HEAD = 64 * 1024
"""``gateway.max_header_bytes``' default: request line and headers together."""
CHAT = b"/v1/chat/completions"


@dataclass(frozen=True)
class Case:
    pieces: tuple[bytes, ...]
    statuses: frozenset[int]
    may_close: bool = False
    """A close without an answer is acceptable too: not HTTP/1 at all, or a head that never
    ends, where the server may stop reading and the client's unsent rest resets the socket
    before the 431 is read."""
    closes: bool = False
    """The connection must be closed after the answer (the rest of the request is unread)."""
    envelope: bool = False
    """The answer is cortex's JSON error envelope (``invalid_request_error``)."""


def post(body: bytes, *headers: bytes, path: bytes = CHAT) -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"Host: cortex", b"Content-Type: application/json"]
    head += [b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(*lines: bytes) -> bytes:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: cortex\r\nTransfer-Encoding: chunked\r\n"
    return head + b"\r\n" + b"".join(lines)


def get(target: bytes = b"/health", *headers: bytes) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: cortex", *headers]) + b"\r\n\r\n"


def bad_body(body: bytes) -> Case:
    return Case((post(body),), frozenset({400}), envelope=True)


def forever(start: bytes, filler: bytes) -> tuple[bytes, ...]:
    """A head that never ends: ``start``, then 4 MiB of ``filler``, 64 KiB at a time."""
    return (start, *[filler * (65536 // len(filler))] * 64)


B400 = frozenset({400})
B431 = frozenset({431})
DEEP = 100_000
CASES: dict[str, Case] = {
    "bad_request_line": Case((b"GARBAGE\r\n\r\n",), B400),
    "unknown_version": Case((b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",), frozenset({400, 505})),
    "space_in_target": Case((b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",), B400),
    "unknown_method": Case(
        (b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n",), frozenset({400, 405, 501})
    ),
    "header_without_colon": Case((get(b"/health", b"NoColonHere"),), B400),
    "space_before_colon": Case((get(b"/health", b"X-A : b"),), B400),
    "nul_in_header_value": Case((get(b"/health", b"X-A: a\x00b"),), B400),
    "nul_in_target": Case((get(b"/hea\x00lth"),), B400),
    "control_byte_in_header_name": Case((get(b"/health", b"X-\x01: a"),), B400),
    "oversized_header_value": Case(
        (get(b"/health", b"X-Big: " + b"a" * (FIELD + 1)),), B431, closes=True
    ),
    "oversized_header_name": Case(
        (get(b"/health", b"X" * (FIELD + 1) + b": a"),), B431, closes=True
    ),
    "oversized_url": Case(
        (get(b"/health?q=" + b"a" * (FIELD + 1)),), frozenset({414, 431}), closes=True
    ),
    "oversized_head": Case(
        (get(b"/health", *[b"X-%d: %s" % (i, b"a" * 1000) for i in range(HEAD // 1000 + 2)]),),
        B431,
        closes=True,
    ),
    "header_value_that_never_ends": Case(
        forever(b"GET /health HTTP/1.1\r\nX-A: ", b"a"), B431, closes=True, may_close=True
    ),
    "header_name_that_never_ends": Case(
        forever(b"GET /health HTTP/1.1\r\nX-", b"a"), B431, closes=True, may_close=True
    ),
    "url_that_never_ends": Case(
        forever(b"GET /health?q=", b"a"), frozenset({414, 431}), closes=True, may_close=True
    ),
    "headers_that_never_end": Case(
        forever(b"GET /health HTTP/1.1\r\n", b"X-A: b\r\n"), B431, closes=True, may_close=True
    ),
    "bad_chunk_size": Case((chunked(b"ZZZ\r\nabc\r\n0\r\n\r\n"),), B400),
    "chunk_size_overflow": Case(
        (chunked(b"FFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n"),), frozenset({400, 413})
    ),
    "chunk_without_crlf": Case((chunked(b"5\r\nhelloXX0\r\n\r\n"),), B400),
    "content_length_and_chunked": Case(
        (post(b'{"model": "m1"}', b"Transfer-Encoding: chunked"),), B400
    ),
    "two_content_lengths": Case((post(b'{"model": "m1"}', b"Content-Length: 3"),), B400),
    "negative_content_length": Case(
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",), B400
    ),
    "content_length_not_a_number": Case(
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n",), B400
    ),
    "huge_declared_content_length": Case(
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{",
        ),
        frozenset({413}),
        closes=True,
        envelope=True,
    ),
    "body_over_the_limit": Case(
        (post(b"[" + b" " * MAX_BODY + b"]"),), frozenset({413}), closes=True, envelope=True
    ),
    "http2_preface": Case(
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",),
        frozenset({400, 505}),
        may_close=True,
    ),
    "deep_json_array": bad_body(b"[" * DEEP),
    "deep_json_object": bad_body(b'{"a":' * DEEP),
    "deep_json_in_a_field": bad_body(
        b'{"model": "m1", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    ),
    "five_thousand_digit_integer": bad_body(b'{"model": "m1", "max_tokens": ' + b"9" * 5000 + b"}"),
    "model_not_a_string": bad_body(b'{"model": 5}'),
    "stream_not_a_boolean": bad_body(b'{"model": "m1", "stream": "yes"}'),
    "body_a_list": bad_body(b"[]"),
    "body_not_json": bad_body(b"hello"),
    "body_empty": bad_body(b""),
    "body_not_utf8": bad_body(b'{"model": "m1\xff\xfe"}'),
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NeuronProcess, CortexProcess]]:
    tmp = tmp_path_factory.mktemp("corpus")
    with neuron(tmp, "n1") as n1, cortex(tmp, [n1], gateway={"max_body_bytes": MAX_BODY}) as gw:
        yield n1, gw


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_malformed_request(gateway: tuple[NeuronProcess, CortexProcess], case: Case) -> None:
    _, gw = gateway
    began = time.monotonic()
    try:
        reply = await exchange(gw.api_port, *case.pieces, timeout=10)
    except TimeoutError:
        raise AssertionError("no answer and no close within 10 s: a hang") from None
    if reply.status is None:
        assert case.may_close, f"closed without an answer (sent {len(b''.join(case.pieces))} B)"
    else:
        assert reply.status in case.statuses, reply.raw[:300]
        assert "date" in reply.headers, f"no Date header: {reply.raw[:300]!r}"
        if case.closes:
            assert reply.closed, "the connection stays open with the request's rest unread"
        if case.envelope:
            assert reply.error_type() == "invalid_request_error", reply.body[:300]
    assert time.monotonic() - began < 10
    assert gw.alive()
    assert await gw.serves(), "cortex stopped serving"


async def test_h2c_upgrade_with_a_body_is_served_as_http1(
    gateway: tuple[NeuronProcess, CortexProcess],
) -> None:
    """``curl --http2`` on a plain-HTTP URL offers an h2c upgrade with its POST (item 6)."""
    _, gw = gateway
    mine = nonce()
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": mine}]}).encode()
    request = post(
        body,
        b"Connection: Upgrade, HTTP2-Settings",
        b"Upgrade: h2c",
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
    )
    logged = len(gw.log())
    reply = await exchange(gw.api_port, request, timeout=10)
    assert reply.status == 200, reply.raw[:300]
    assert json.loads(reply.body)["id"] == mine
    assert "WARNING" not in gw.log()[logged:] and "Traceback" not in gw.log()[logged:]


async def test_an_inference_answer_is_whole_http(
    gateway: tuple[NeuronProcess, CortexProcess],
) -> None:
    """The fast path's answers carry what any HTTP/1.1 answer must (item 7: ``Date``)."""
    _, gw = gateway
    mine = nonce()
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": mine}]}).encode()
    reply = await exchange(gw.api_port, post(body), timeout=10)
    assert reply.status == 200 and json.loads(reply.body)["id"] == mine
    assert "date" in reply.headers, reply.raw[:300]


async def test_hop_by_hop_and_repeated_headers(
    gateway: tuple[NeuronProcess, CortexProcess],
) -> None:
    """Headers the client names in ``Connection`` are for cortex only; a header sent twice
    reaches the neuron with both values (item 7)."""
    n1, gw = gateway
    mine = nonce()
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": mine}]}).encode()
    request = post(
        body, b"Connection: keep-alive, X-Hop", b"X-Hop: secret", b"X-Twice: a", b"X-Twice: b"
    )
    reply = await exchange(gw.api_port, request, timeout=10)
    assert reply.status == 200, reply.raw[:300]
    seen = (await n1.astats())["headers"][mine]
    names = [name for name, _ in seen]
    assert "x-hop" not in names
    twice = [v.strip() for name, value in seen if name == "x-twice" for v in value.split(",")]
    assert twice == ["a", "b"], seen
