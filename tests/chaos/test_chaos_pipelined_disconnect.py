"""A client that pipelines two requests and then goes away (issue 14, item 8): the request
being answered is the one cancelled, so the neuron stops generating for it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from chaos_support import cortex, neuron, nonce


def _stream_request(mine: str) -> bytes:
    body = json.dumps(
        {"model": "m1", "stream": True, "messages": [{"role": "user", "content": mine}]}
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: cortex\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def test_pipelined_disconnect_cancels_the_running_request(tmp_path: Path) -> None:
    with neuron(tmp_path, "n1", chunks=0, chunk_delay=0.2) as n1, cortex(tmp_path, [n1]) as gw:
        first, second = nonce(), nonce()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.api_port)
        try:
            writer.write(_stream_request(first) + _stream_request(second))
            async with asyncio.timeout(10):
                await reader.readuntil(b"\r\n\r\n")
                assert first.encode() in await reader.readuntil(b"\n\n")  # the first streams
        finally:
            writer.transport.abort()
        gone = time.monotonic()
        while (stats := await n1.astats())["streams_open"]:
            assert time.monotonic() - gone < 3, "the neuron still generates for a client gone"
            await asyncio.sleep(0.1)
        assert stats["seen"]["/v1/chat/completions"] == [first]  # the second never started
        assert stats["streams_cut"] == 1
        assert await gw.in_flight() == 0
        assert gw.alive() and await gw.serves()
