"""A neuron that frames its SSE with CRLF gets its events relayed one by one, not at the end."""

from __future__ import annotations

import json

from cortex_testing import cortex
from fake_neuron import FakeNeuron

from cortex.upstream.sse import EventSplitter, split_events

CHAT = "/v1/chat/completions"
EVENTS = [
    b'data: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\n',
    b"event: ping\r\ndata: {}\r\n\r\n",
    b'data: {"choices": [], "usage": {"prompt_tokens": 3}}\r\r',
    b"data: [DONE]\n\n",
]


def test_crlf_and_cr_framed_events_come_out_whole_at_every_cut() -> None:
    stream = b"".join(EVENTS)
    for cut in range(1, len(stream)):
        splitter = EventSplitter()
        out = [splitter.whole(stream[:cut]), splitter.whole(stream[cut:]), splitter.rest()]
        assert b"".join(out) == stream
        assert out[2] == b""
        assert [e for part in out for e in split_events(part)] == EVENTS


async def test_a_crlf_stream_reaches_the_client_event_by_event() -> None:
    fake = FakeNeuron("n1", chunks=4, chunk_delay=0.4, crlf=True)
    async with cortex(fake) as c:
        async with c.client.stream("POST", CHAT, json={"model": "m1", "stream": True}) as r:
            pieces = r.aiter_raw()
            first = await anext(pieces)
            assert fake.sent < fake.chunks  # here before the neuron's stream ended
            assert first.startswith(b"data: ") and first.endswith(b"\r\n\r\n")
            rest = b"".join([piece async for piece in pieces])
        events = (first + rest).split(b"\r\n\r\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        # The usage chunk cortex asked for is dropped again, and its counts still taken.
        assert all(b'"usage"' not in e for e in events)
        assert [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:4]] == [
            "t0",
            "t1",
            "t2",
            "t3",
        ]
        assert 'cortex_prompt_tokens_total{key="_anonymous",model="m1"} 3.0' in await c.metrics()
