"""``curl --http2`` on plain HTTP offers an upgrade to h2c; cortex declines and relays the body."""

from __future__ import annotations

import asyncio
import json

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron
from http_wire import Echo, connect, settle


async def test_an_inference_post_offering_h2c_is_relayed_with_its_body() -> None:
    async with cortex(FakeNeuron("n1")) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        body = b'{"model": "m1"}'
        writer.write(  # what curl --http2 sends
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: cortex\r\n"
            b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
            b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answer = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        writer.close()
        assert answer["node"] == "n1"
        seen = c.neurons["n1"].seen
        assert seen[0]["body"] == {"model": "m1"}
        assert "upgrade" not in seen[0]["headers"]


@pytest.mark.parametrize(
    "framing",
    [
        b"transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n",
        b"transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n",
        b"transfer-encoding: gzip, chunked\r\n",
    ],
)
async def test_an_offer_with_its_framing_on_several_lines_is_framed_as_sent(
    framing: bytes,
) -> None:
    conn, wire, _ = connect(Echo())
    data = (
        b"POST /direct HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: h2c\r\n"
        + framing
        + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    conn.data_received(data)  # never raises
    await settle()
    out = wire.take()
    if framing.endswith(b"gzip\r\n"):  # chunked is not the last coding: no way to frame it
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    else:
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")
