"""Streams still running when the drain runs out end with one in-band error event."""

from __future__ import annotations

import asyncio
import json

from cortex_testing import cortex
from fake_neuron import FakeNeuron
from http_wire import Echo, connect, settle


async def test_a_cut_stream_gets_the_apps_last_event_then_the_end_of_the_stream() -> None:
    conn, wire, _ = connect(Echo())
    conn.data_received(b"POST /direct-stream HTTP/1.1\r\ncontent-length: 1\r\n\r\na")
    await settle()
    conn.cut()
    await settle()
    out = wire.take()
    assert out.endswith(b"\r\n\r\n9\r\ndata: a\n\n\r\nb\r\ndata: cut\n\n\r\n0\r\n\r\n")
    assert wire.closed


async def test_the_drain_ends_a_long_stream_in_band() -> None:
    fake = FakeNeuron("n1", chunks=1000, chunk_delay=0.05)
    for path, anthropic in (("/v1/chat/completions", False), ("/v1/messages", True)):
        async with cortex(fake, graceful=0.5, gateway={"drain_timeout": 0.5}) as c:
            reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
            body = b'{"model": "m1", "stream": true}'
            writer.write(
                b"POST %s HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s"
                % (path.encode(), len(body), body)
            )
            await asyncio.wait_for(reader.readuntil(b"data: "), 10)
        # The servers have stopped: what the client got is all there is.
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert rest.endswith(b"\r\n0\r\n\r\n")
        last = rest.split(b"\r\n")[-4]  # the last chunk before the end of the stream
        data = json.loads(last.split(b"data: ", 1)[1])
        assert data["error"]["type"] == "overloaded_error"
        if anthropic:
            assert last.startswith(b"event: error\n")
        else:
            assert data["error"]["code"] == "shutting_down"
        assert "drain_timeout" in data["error"]["message"]
        assert fake.streaming == 0
