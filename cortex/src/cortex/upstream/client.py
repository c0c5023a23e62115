"""The long-lived aiohttp session cortex polls neurons and loads models with.

The relay's own requests go through :mod:`cortex.upstream.wire` instead, a leaner client
(bench/README.md, ``relay_clients.py``). aiohttp, not httpx, here as well: httpx's pool
costs several times more CPU per request under concurrency.
"""

from __future__ import annotations

import aiohttp

from cortex.settings import Gateway


class TooLarge(aiohttp.ClientPayloadError):
    """A neuron's answer went over the bytes allowed; it was read no further."""


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """``response``'s body, or :class:`TooLarge` once it passes ``limit`` bytes (declared or
    read); the connection is then closed, never reused, and nothing read is kept."""
    if (response.content_length or 0) > limit:
        response.close()
        raise TooLarge(f"answer of {response.content_length} bytes, over {limit}")
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) > limit:
            response.close()
            raise TooLarge(f"answer over {limit} bytes")
    return bytes(body)


def make_session(gateway: Gateway) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: the neurons and their engines are the back-pressure
        limit_per_host=0,
        keepalive_timeout=gateway.upstream_idle_timeout,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # Short connect; the read timeout is an idle timeout between chunks, never a deadline
        # on the whole answer (long generations are fine while tokens flow).
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=gateway.connect_timeout, sock_read=gateway.idle_timeout
        ),
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
    )
