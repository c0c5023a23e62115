"""Neurons in memory: a :class:`~cortex.upstream.wire.Connector` with no sockets.

The relay's client (:mod:`cortex.upstream.wire`) writes and parses HTTP/1.1 itself. With
:class:`MemoryNeuron` as its connector, every connection it opens is served by a handler
that sees exactly the bytes cortex sent and answers exactly the bytes a test chooses, in
pieces as small as it likes, with the connection closed wherever it likes: the protocol is
tested byte for byte, and the relay above it without a neuron process or a port (as
httpx's ``MockTransport`` does for httpx).

Bytes go each way through the event loop's ``call_soon``, one ``data_received`` per
:meth:`Peer.send`, in order; a paused reader (flow control) gets them when it resumes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

P = TypeVar("P", bound=asyncio.Protocol)


class Peer:
    """The neuron's end of one in-memory connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        self._loop = loop
        self._protocol = protocol
        self.transport = _Transport(self)
        self.received = bytearray()
        """Every byte cortex sent on this connection."""
        self._unread = bytearray()
        self._arrived = asyncio.Event()
        self.closed_by_cortex = asyncio.Event()
        self._gone = False  # connection_lost was (or is about to be) called
        self._held: list[bytes] = []  # sent while cortex's side had paused reading

    # -- the neuron's side

    async def request(self) -> bytes:
        """The next whole request (head and ``Content-Length`` body); b"" if cortex closed."""
        while True:
            head_end = self._unread.find(b"\r\n\r\n")
            if head_end >= 0:
                head = bytes(self._unread[: head_end + 4])
                length = _content_length(head)
                if len(self._unread) >= len(head) + length:
                    whole = bytes(self._unread[: len(head) + length])
                    del self._unread[: len(whole)]
                    return whole
            if self.closed_by_cortex.is_set():
                return b""
            self._arrived.clear()
            await self._arrived.wait()

    def send(self, data: bytes) -> None:
        """Hand ``data`` to cortex: one ``data_received`` call, soon, after earlier ones."""
        self._loop.call_soon(self._deliver, bytes(data))

    def hang_up(self) -> None:
        """Close the connection from the neuron's side, after what was sent is delivered."""
        self._loop.call_soon(self._lose)

    # -- the wiring

    def _deliver(self, data: bytes) -> None:
        if self._gone:
            return
        if self.transport.paused or self._held:
            self._held.append(data)
            return
        self._protocol.data_received(data)

    def _resumed(self) -> None:
        while self._held and not self.transport.paused and not self._gone:
            self._protocol.data_received(self._held.pop(0))

    def _lose(self) -> None:
        if self._held:  # deliver first, as a socket would once it is read
            self._loop.call_soon(self._lose)
            return
        if not self._gone:
            self._gone = True
            self._protocol.connection_lost(None)

    def _written(self, data: bytes) -> None:
        self.received += data
        self._unread += data
        self._arrived.set()

    def _closed(self) -> None:
        self.closed_by_cortex.set()
        self._arrived.set()
        if not self._gone:
            self._gone = True
            self._held.clear()
            self._loop.call_soon(self._protocol.connection_lost, None)


class _Transport(asyncio.Transport):
    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self._peer = peer
        self.paused = False
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._peer._written(bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._peer._closed()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self._peer._resumed()

    def is_reading(self) -> bool:
        return not self.paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


Handler = Callable[[Peer], Coroutine[Any, Any, None]]
"""Serves one connection; the connection stays open when it returns, unless it hung up."""


class MemoryNeuron:
    """A connector whose every connection is served in memory by ``handler``.

    ``refuse`` makes connecting fail as a closed port does. ``peers`` lists every
    connection opened, in order.
    """

    def __init__(self, handler: Handler, *, refuse: bool = False) -> None:
        self.handler = handler
        self.refuse = refuse
        self.peers: list[Peer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(
        self,
        protocol: Callable[[], P],
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> P:
        if self.refuse:
            raise ConnectionRefusedError(f"Connect call failed ({host!r}, {port})")
        conn = protocol()
        loop = asyncio.get_running_loop()
        peer = Peer(loop, conn)
        self.peers.append(peer)
        conn.connection_made(peer.transport)
        task: asyncio.Task[None] = loop.create_task(self.handler(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    async def aclose(self) -> None:
        """Stop every handler still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
