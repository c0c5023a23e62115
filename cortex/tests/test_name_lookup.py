"""A neuron named by host name is looked up once for many connections, and again when it may
have moved: after ``resolve_every`` seconds, or when a connect to its addresses fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cortex.upstream.wire import ConnectFailed, Upstream, host_of


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


@contextlib.contextmanager
def deaf(address: str, port: int) -> Iterator[None]:
    """A listener on ``address:port`` whose accept queue is full: Linux drops further SYNs."""
    with socket.socket() as listener:
        listener.bind((address, port))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((address, port))
        try:
            yield
        finally:
            for filler in fillers:
                filler.close()


async def test_an_address_that_never_answers_gets_a_share_of_the_timeout_then_goes_last() -> None:
    """A name with two addresses, the first silent (an IPv6 address with no route, say)."""

    async def both(host: str, port: int) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    async with neuron("127.0.0.1", keep_alive=False) as server:
        port = server.sockets[0].getsockname()[1]
        with deaf("127.0.0.2", port):
            client = Upstream(connect_timeout=1, idle_timeout=2, resolver=both)
            base = f"http://gpu-1:{port}"
            started = time.monotonic()
            assert await answer_of(client, base) == b"127.0.0.1"
            took = time.monotonic() - started
            assert 0.45 < took < 0.9  # half the connect timeout went to the silent address
            started = time.monotonic()
            assert await answer_of(client, base) == b"127.0.0.1"  # a new connection...
            assert time.monotonic() - started < 0.4  # ...straight to the one that answered
            assert len(server.seen) == 2
            client.close()


def test_a_looked_up_ipv6_address_keeps_its_scope() -> None:
    assert host_of(("fe80::1", 13131, 0, 2)) == "fe80::1%2"
    assert host_of(("2001:db8::1", 13131, 0, 0)) == "2001:db8::1"
    assert host_of(("10.0.0.7", 13131)) == "10.0.0.7"
    # ...in the form the resolver reads back when cortex connects to it.
    [entry] = socket.getaddrinfo("fe80::1%2", 13131, type=socket.SOCK_STREAM)
    assert entry[4] == ("fe80::1", 13131, 0, 2)
