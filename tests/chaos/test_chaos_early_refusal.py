"""A request refused before its body is read (401: no key, 413: declared too large) is
answered at once and its connection closed, so the unread body is never taken for the next
request and never swallowed into cortex's memory (issue 14, item 7)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chaos_support import cortex, exchange, neuron

LIMIT = 1024 * 1024


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: 104857600\r\n", 401),  # no API key
        (b"Authorization: Bearer sekrit\r\nContent-Length: 104857600\r\n", 413),
    ],
    ids=["401", "413"],
)
async def test_refused_before_the_body(tmp_path: Path, headers: bytes, status: int) -> None:
    with (
        neuron(tmp_path, "n1") as n1,
        cortex(tmp_path, [n1], gateway={"max_body_bytes": LIMIT}, auth_keys=["sekrit"]) as gw,
    ):
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        body = [b'{"model": "m1", "pad": "' + b"a" * 65536] * 16  # 1 MiB of the 100 declared
        began = time.monotonic()
        reply = await exchange(gw.api_port, head, *body, timeout=10)
        assert reply.status == status, reply.raw[:300]
        assert time.monotonic() - began < 2
        assert reply.closed, "the connection stays open with the body unread"
        assert await gw.serves()
