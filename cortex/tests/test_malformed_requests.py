"""Whatever bytes come, the connection answers 4xx or waits; it never raises or hangs up mute."""

from __future__ import annotations

import random

import pytest
from http_wire import Echo, connect, settle

CORPUS = [
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\n Folded: header\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \x7f\x00\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET http://[::1 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET http://a HTTP/1.1\r\n\r\n",
    b"POST /direct HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: gzip\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /direct HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST /direct HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nAuthorization: x\r\n\r\n",
]


def mutated(seed: int) -> bytes:
    rng = random.Random(seed)
    data = bytearray(rng.choice(CORPUS) + b"GET /x HTTP/1.1\r\n\r\n")
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
    return bytes(data)


@pytest.mark.parametrize("data", CORPUS + [mutated(seed) for seed in range(200)])
async def test_bad_bytes_get_a_definite_answer_or_none(data: bytes) -> None:
    conn, wire, _ = connect(Echo())
    for i in range(0, len(data), 7):  # and split anywhere
        conn.data_received(data[i : i + 7])
    await settle()
    out = wire.take()
    if out:
        status = int(out.split(b" ", 2)[1])
        assert out.startswith(b"HTTP/1.1 ")
        assert 200 <= status < 300 or status in (400, 431)
    conn.connection_lost(None)
    await settle()


@pytest.mark.parametrize("seed", range(200))
async def test_no_exception_leaves_the_protocol_whatever_comes_and_however_split(
    seed: int,
) -> None:
    rng = random.Random(seed)
    data = mutated(seed + 1000) + rng.choice(CORPUS)
    conn, wire, _ = connect(Echo(), max_header_bytes=1024, max_header_field_bytes=256)
    i = 0
    while i < len(data):
        step = rng.randint(1, 40)
        conn.data_received(data[i : i + step])  # the test fails on anything it raises
        i += step
        if rng.random() < 0.2:
            conn.pause_writing() if rng.random() < 0.5 else conn.resume_writing()
            await settle()
    await settle()
    out = wire.take()
    assert not out or out.startswith(b"HTTP/1.1 ")
    conn.connection_lost(None)
    await settle()
