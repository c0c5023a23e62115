"""Request bodies held in memory share one budget, ``max_body_memory`` (issue 20, item 8).

On caa7468 nothing bounded the bytes of all bodies received at once: 20 concurrent 32 MiB
bodies took cortex to 2 GB. Past the budget a request now gets 503 with ``Retry-After``
(and its connection closes) instead of growing, and a request's bytes count only until it
is over.
"""

from __future__ import annotations

import json

from http_wire import Echo, connect, settle

from cortex.http.limits import Limits
from cortex.settings import CortexSettings


def post(body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return b"POST /direct HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (size, body)


async def test_a_body_past_the_budget_gets_503_while_the_others_go_on() -> None:
    app = Echo()
    first, first_wire, listener = connect(app, max_body_memory=1000)
    second, second_wire = listener.protocol(), first_wire.__class__()
    second_wire.protocol = second
    second.connection_made(second_wire)

    first.data_received(post(b"a" * 700, 800))  # 700 of 800 bytes in
    await settle()
    assert listener.budget.used == 700
    second.data_received(post(b"b" * 500))  # 700 + 500 > 1000
    await settle()
    out = second_wire.take()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out
    assert b"retry-after: 5\r\n" in out and b"connection: close\r\n" in out
    envelope = json.loads(out.partition(b"\r\n\r\n")[2])
    assert envelope["error"]["code"] == "request_bodies_full"
    assert listener.budget.used == 700

    first.data_received(b"a" * 100)
    await settle()
    assert first_wire.take().endswith(b"a" * 800)
    assert listener.budget.used == 0  # the answer is written: its body no longer counts
    first.data_received(post(b"c" * 900))
    await settle()
    assert first_wire.take().endswith(b"c" * 900) and listener.budget.used == 0


async def test_a_client_gone_mid_body_gives_its_bytes_back() -> None:
    conn, _, listener = connect(Echo(), max_body_memory=1000)
    conn.data_received(post(b"a" * 600, 900))
    await settle()
    assert listener.budget.used == 600
    conn.connection_lost(None)
    await settle()
    assert listener.budget.used == 0


def test_the_defaults_are_one_gibibyte_and_sixty_seconds() -> None:
    gateway = CortexSettings().gateway
    assert gateway.max_body_memory == Limits().max_body_memory == 1 << 30
    assert gateway.body_timeout == Limits().body_timeout == 60.0
