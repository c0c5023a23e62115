"""cortex's listening sockets: what every accepted connection inherits from them."""

from __future__ import annotations

import asyncio
import socket

from cortex.server import bind


async def test_accepted_connections_have_nagle_off() -> None:
    """asyncio turns Nagle off only on sockets that say they are TCP; ours must say so.

    With Nagle on, a stream's second small chunk waits for the client's delayed ACK of the
    first (up to 40 ms on Linux): chunks arrive late and merged.
    """
    sock = bind("127.0.0.1:0")
    assert sock.proto == socket.IPPROTO_TCP
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(seen, 5) != 0
        writer.close()
