"""An answer given before the request's body was read (413, 401) closes the connection.

Otherwise the unread rest of the body would be read as the next request, or swallowed.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

from cortex_testing import cortex
from fake_neuron import FakeNeuron
from http_wire import Echo, connect, settle


async def test_an_early_answer_closes_and_the_rest_of_the_body_is_never_a_request() -> None:
    app = Echo()
    conn, wire, _ = connect(app)
    conn.data_received(b"POST /early HTTP/1.1\r\ncontent-length: 100\r\n\r\nGET /x HTTP/1.1\r\n")
    await settle()
    out = wire.take()
    # Python's phrase: 3.13 renamed 413 "Content Too Large" (RFC 9110), 3.11 says "Request Entity Too Large".
    assert out.startswith(b"HTTP/1.1 413 %s\r\n" % HTTPStatus(413).phrase.encode())
    assert b"connection: close\r\n" in out
    assert wire.eof
    conn.data_received(b"\r\n" + b"z" * 80)  # the rest of the body
    await settle()
    assert wire.take() == b""
    assert app.scopes == []


async def test_a_refused_key_with_a_body_on_its_way_is_401_and_closed() -> None:
    async with cortex(FakeNeuron("n1"), auth={"api_keys": ["k1"]}) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.client.base_url.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: cortex\r\nauthorization: Bearer no\r\n"
            b"content-length: 1000000\r\n\r\n" + b"x" * 1000
        )
        answer = await asyncio.wait_for(reader.read(), 10)  # ends: cortex closes
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 ")
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["message"] == "invalid API key"
        assert c.neurons["n1"].seen == []
