"""Headers that belong to one hop stay there; every other header is relayed, repeats and all.

Hop-by-hop headers (RFC 9110 7.6.1) and the ones a ``Connection`` header names are about
the connection they came on: forwarded, they would tell the next hop things that are not
true of its own connection (or leak what was meant for one hop only).
"""

from __future__ import annotations

from cortex_testing import cortex
from fake_neuron import FakeNeuron

CHAT = "/v1/chat/completions"
FROM_CLIENT = [
    ("connection", "keep-alive, x-client-hop"),
    ("x-client-hop", "secret"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
    ("proxy-authorization", "Basic abc"),
    ("x-dup", "one"),
    ("x-dup", "two"),
    ("x-trace", "t1"),
]
FROM_NEURON = [
    ("connection", "x-neuron-hop"),
    ("x-neuron-hop", "internal"),
    ("keep-alive", "timeout=60"),
    ("proxy-authenticate", "Basic"),
    ("set-cookie", "a=1"),
    ("set-cookie", "b=2"),
    ("x-served-by", "n1"),
]
GONE = {"x-client-hop", "keep-alive", "te", "proxy-authorization", "x-neuron-hop"}


async def test_hop_by_hop_headers_stop_and_repeated_ones_are_kept_both_ways() -> None:
    fake = FakeNeuron("n1", answer_headers=FROM_NEURON)
    async with cortex(fake) as c:
        for stream in (False, True):
            response = await c.client.post(
                CHAT, json={"model": "m1", "stream": stream}, headers=FROM_CLIENT
            )
            assert response.status_code == 200
            sent = [(n.decode(), v.decode()) for n, v in fake.seen[-1]["raw_headers"]]
            names = {n for n, _ in sent}
            assert not names & GONE
            assert [v for n, v in sent if n == "x-dup"] == ["one", "two"]
            assert ("x-trace", "t1") in sent
            assert not {n for n, _ in response.headers.raw} & {
                name.encode() for name in GONE | {"proxy-authenticate"}
            }
            assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
            assert response.headers["x-served-by"] == "n1"
