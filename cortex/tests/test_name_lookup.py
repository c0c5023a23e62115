"""A neuron named by host name is looked up once for many connections, and again when it may
have moved: after ``resolve_every`` seconds, or when a connect to its addresses fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cortex.upstream.wire import ConnectFailed, Upstream


class Names:
    """The resolver seam: a table of names, counting look-ups."""

    def __init__(self, **table: str) -> None:
        self.table = table
        self.calls = 0
        self.down = False

    async def __call__(self, host: str, port: int) -> list[tuple[Any, ...]]:
        self.calls += 1
        await asyncio.sleep(0.02)  # long enough for a burst's connects to overlap it
        if self.down or host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (self.table[host], port))]


@contextlib.asynccontextmanager
async def neuron(address: str, port: int = 0, *, keep_alive: bool = True) -> AsyncIterator[Any]:
    """A server on ``address`` that names itself in every answer; counts its connections."""
    seen: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    await asyncio.sleep(0.05)  # requests in flight together need connections each
                    body = address.encode()
                    close = b"" if keep_alive else b"connection: close\r\n"
                    writer.write(
                        b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s"
                        % (close, len(body), body)
                    )
                    if not keep_alive:
                        break
        finally:
            writer.close()

    server = await asyncio.start_server(serve, address, port)
    server.seen = seen  # type: ignore[attr-defined]
    async with server:
        yield server
        for task in seen:  # connections the client still keeps alive
            task.cancel()
        await asyncio.gather(*seen, return_exceptions=True)


async def answer_of(client: Upstream, base: str) -> bytes:
    return await (await client.post(base, "/v1/chat/completions", b"{}", {})).read()


async def test_a_burst_to_a_named_neuron_looks_the_name_up_once() -> None:
    names = Names(**{"gpu-1": "127.0.0.1"})
    client = Upstream(connect_timeout=2, idle_timeout=2, resolver=names)
    async with neuron("127.0.0.1") as server:
        base = f"http://gpu-1:{server.sockets[0].getsockname()[1]}"
        answers = await asyncio.gather(*(answer_of(client, base) for _ in range(20)))
        assert answers == [b"127.0.0.1"] * 20
        assert len(server.seen) == 20  # twenty connections...
        assert names.calls == 1  # ...one look-up
        await answer_of(client, base)
        assert names.calls == 1
    client.close()


async def test_a_neuron_that_moves_is_followed_after_resolve_every() -> None:
    names = Names(**{"gpu-1": "127.0.0.1"})
    client = Upstream(connect_timeout=2, idle_timeout=2, resolver=names, resolve_every=0.5)
    async with neuron("127.0.0.1", keep_alive=False) as old:
        port = old.sockets[0].getsockname()[1]
        base = f"http://gpu-1:{port}"
        async with neuron("127.0.0.2", port, keep_alive=False):
            assert await answer_of(client, base) == b"127.0.0.1"
            names.table["gpu-1"] = "127.0.0.2"  # the name moves; the old host still answers
            assert await answer_of(client, base) == b"127.0.0.1"  # looked up ~0.1 s ago
            await asyncio.sleep(0.6)
            assert await answer_of(client, base) == b"127.0.0.2"
            assert names.calls == 2
    client.close()


async def test_a_failed_connect_looks_the_name_up_again_at_once() -> None:
    names = Names(**{"gpu-1": "127.0.0.1"})
    client = Upstream(connect_timeout=2, idle_timeout=2, resolver=names)  # 30 s between
    async with neuron("127.0.0.2", keep_alive=False) as moved:
        port = moved.sockets[0].getsockname()[1]
        base = f"http://gpu-1:{port}"
        with pytest.raises(ConnectFailed):  # nothing listens on 127.0.0.1 at that port
            await answer_of(client, base)
        names.table["gpu-1"] = "127.0.0.2"
        assert await answer_of(client, base) == b"127.0.0.2"
        assert names.calls == 2
    client.close()


async def test_a_name_that_does_not_resolve_is_a_connect_failure() -> None:
    client = Upstream(connect_timeout=2, idle_timeout=2, resolver=Names())
    with pytest.raises(ConnectFailed, match=r"cannot resolve 'nowhere': .*Name or service"):
        await answer_of(client, "http://nowhere:13131")
    client.close()


async def test_a_failed_look_up_keeps_the_last_addresses(caplog: pytest.LogCaptureFixture) -> None:
    names = Names(**{"gpu-1": "127.0.0.1"})
    client = Upstream(connect_timeout=2, idle_timeout=2, resolver=names, resolve_every=0.1)
    async with neuron("127.0.0.1", keep_alive=False) as server:
        base = f"http://gpu-1:{server.sockets[0].getsockname()[1]}"
        assert await answer_of(client, base) == b"127.0.0.1"
        names.down = True  # the resolver is unreachable for a while
        await asyncio.sleep(0.15)
        with caplog.at_level(logging.WARNING, "cortex.upstream"):
            assert await answer_of(client, base) == b"127.0.0.1"
        assert names.calls == 2
        assert "looking up gpu-1 failed" in caplog.text
        assert "keeping its last addresses" in caplog.text
    client.close()


async def test_the_system_resolver_is_the_default() -> None:
    client = Upstream(connect_timeout=2, idle_timeout=2)
    async with neuron("127.0.0.1") as server:
        base = f"http://localhost:{server.sockets[0].getsockname()[1]}"
        assert await answer_of(client, base) == b"127.0.0.1"
    client.close()
