"""Which headers the relay passes on, each way.

Hop-by-hop headers (RFC 9110 section 7.6.1), and every header a ``Connection`` header names,
describe the connection they came on, so they stop at cortex in both directions. The rest
go on as they came: names, values and repeats (two ``set-cookie`` stay two), never merged.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]
"""Raw header pairs, names in lower case (as ASGI and :mod:`cortex.upstream.wire` give them)."""

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"content-length",  # the wire client sets its own
    b"expect",  # cortex has read the whole body already and sends it in one go
    b"authorization",  # the client's key is for cortex; the neuron gets its own token
    b"x-api-key",
    b"x-cortex-request",  # the wire client's own (cortex.upstream.wire.ECHO)
}
NOT_RETURNED = HOP_BY_HOP | {
    b"server",
    b"date",
    b"content-length",  # cortex sets its own
    b"x-cortex-request",  # the neuron's echo, for the wire client only
}


def forwarded(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The client's ``headers`` that go on to the neuron."""
    return _without(headers, NOT_FORWARDED)


def returned(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The neuron's ``headers`` that go back to the client."""
    return _without(headers, NOT_RETURNED)


def _without(headers: Iterable[tuple[bytes, bytes]], dropped: frozenset[bytes]) -> Headers:
    headers = list(headers)
    for name, value in headers:
        if name == b"connection":  # rare: HTTP/1.1 keeps alive by default
            dropped = dropped | {token.strip().lower() for token in value.split(b",")}
    return [(name, value) for name, value in headers if name not in dropped]
