"""A client that leaves with requests pipelined stops the request being answered.

Not the last one parsed: that one was never started, and the one being answered would go
on generating for nobody.
"""

from __future__ import annotations

import asyncio

from cortex_testing import cortex
from fake_neuron import FakeNeuron
from http_wire import Echo, connect, settle

CHAT = b"/v1/chat/completions"


async def test_the_running_request_is_cancelled_and_the_pipelined_one_never_starts() -> None:
    app = Echo()
    conn, _, _ = connect(app)
    conn.data_received(
        b"POST /direct-slow HTTP/1.1\r\ncontent-length: 1\r\n\r\na"
        b"POST /direct HTTP/1.1\r\ncontent-length: 1\r\n\r\nb"
    )
    await settle()
    conn.connection_lost(None)
    await settle()
    assert app.direct.cancelled == ["/direct-slow"]
    assert app.direct.started == ["/direct-slow"]


async def test_a_client_gone_with_a_request_pipelined_behind_a_stream_stops_the_stream() -> None:
    fake = FakeNeuron("n1", chunks=1000, chunk_delay=0.02)
    async with cortex(fake) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        stream, whole = b'{"model": "m1", "stream": true}', b'{"model": "m1"}'
        writer.write(
            b"POST %s HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (CHAT, len(stream), stream)
            + b"POST %s HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (CHAT, len(whole), whole)
        )
        await asyncio.wait_for(reader.readuntil(b"data: "), 10)
        assert fake.streaming == 1
        writer.transport.abort()
        for _ in range(100):
            if fake.streaming == 0:
                break
            await asyncio.sleep(0.02)
        assert fake.streaming == 0 and fake.cancelled == 1
        assert fake.sent < 100
        assert len(fake.seen) == 1  # the pipelined request never reached the neuron
        assert c.gateway.fleet.nodes[0].in_flight == 0


async def test_a_client_leaving_after_a_large_body_is_seen_while_the_answer_is_worked_on() -> None:
    """Reading paused for a body over 64 KiB resumes once the body is in, so a hang-up is seen."""
    app = Echo()
    conn, wire, _ = connect(app)
    body = b"x" * 100_000
    data = b"POST /direct-slow HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    for i in range(0, len(data), 16384):
        conn.data_received(data[i : i + 16384])
        await settle()
    assert app.direct.started == ["/direct-slow"]
    assert wire.reading
    conn.connection_lost(None)
    await settle()
    assert app.direct.cancelled == ["/direct-slow"]
