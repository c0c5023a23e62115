"""cortex's listening sockets: what every accepted connection inherits from them."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from cortex.server import LISTEN_BACKLOG, accept_queue_cap, bind, warn_if_accept_queue_capped


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


def test_a_capped_accept_queue_is_one_warning_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """net.core.somaxconn below what cortex asks for: one warning that names the sysctl."""
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("128\n")
    assert accept_queue_cap(somaxconn) == 128
    with caplog.at_level(logging.WARNING, logger="cortex"):
        warn_if_accept_queue_capped(somaxconn)
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("net.core.somaxconn is 128: the kernel queues at most")
    assert "(sysctl -w net.core.somaxconn=4096), then restart cortex" in record.getMessage()


def test_an_accept_queue_as_long_as_asked_or_unknown_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    roomy, garbled = tmp_path / "roomy", tmp_path / "garbled"
    roomy.write_text(f"{LISTEN_BACKLOG}\n")
    garbled.write_text("many\n")
    with caplog.at_level(logging.DEBUG, logger="cortex"):
        for path in (roomy, garbled, tmp_path / "absent"):
            warn_if_accept_queue_capped(path)
    assert caplog.records == []
    assert accept_queue_cap(garbled) is None
    assert accept_queue_cap(tmp_path / "absent") is None
