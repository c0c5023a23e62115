"""The neuron's listener: Hypercorn's HTTP/1.1 connections behind a cap and a head timeout.

Hypercorn (0.17, 0.18) has neither. It accepts every connection, and the only timer on a new
one is ``keep_alive_timeout`` (75 s here, so cortex's pooled connections live): a client that
opens hundreds of connections and trickles their heads holds them that long, before any
token is checked. So the accept step is the neuron's own, and each accepted connection is
then served by Hypercorn's ``TCPServer`` exactly as ``hypercorn.asyncio.serve`` serves it
(the same lifespan, the same graceful shutdown). The Hypercorn internals that takes sit
behind :mod:`neuron.hypercorn_seam`, which checks them at start;
``neuron/tests/test_listener.py`` pins the behaviour.

- At most ``max_connections`` connections are open; one more is answered a fixed 503 (with
  ``Retry-After``) and closed before anything is read from it.
- A connection that has not made a request carrying the token (:meth:`Listener.trust`, called
  by :class:`neuron.gate.Gate`) within ``head_timeout`` seconds of being accepted is closed,
  however slowly it is still sending. A request without the token is answered 401 and its
  connection closed, so only a trusted connection outlives ``head_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from hypercorn.config import Config
from starlette.types import ASGIApp

from neuron.errors import envelope
from neuron.hypercorn_seam import Serving
from neuron.metrics import NeuronMetrics

log = logging.getLogger("neuron.listener")

Peer = tuple[str, int]
RETRY_AFTER = 1


def busy_answer(max_connections: int) -> bytes:
    """The whole answer to a connection over the cap (written before reading anything)."""
    body = json.dumps(
        envelope(
            f"this neuron has {max_connections} connections open (max_connections); retry",
            "service_unavailable",
            "too_many_connections",
        )
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"retry-after: {RETRY_AFTER}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Listener:
    """Accepts the neuron's connections; see the module docstring.

    :meth:`trust` and the timers run on the event loop's thread only.
    """

    def __init__(
        self, metrics: NeuronMetrics, *, max_connections: int, head_timeout: float
    ) -> None:
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.open = 0
        self.refused = 0
        """Connections answered 503 for the cap, since start."""
        self._gauge = metrics.connections
        self._refused = metrics.connections_closed.labels("max_connections")
        self._expired = metrics.connections_closed.labels("head_timeout")
        self._untrusted: dict[Peer, _Deadline] = {}
        self._busy = busy_answer(max_connections)

    def trust(self, client: tuple[str, int] | None) -> None:
        """The connection from ``client`` made a request with the token: it may stay."""
        if client is not None:
            deadline = self._untrusted.get((client[0], client[1]))
            if deadline is not None:
                deadline.cancel()

    async def serve(
        self, app: ASGIApp, config: Config, *, shutdown_trigger: Callable[[], Awaitable[object]]
    ) -> None:
        """Serve ``app`` on ``config.bind`` until ``shutdown_trigger`` returns; then stop
        accepting, let open connections finish for ``config.graceful_timeout`` seconds, cancel
        the rest and run the app's lifespan shutdown."""
        serving = Serving(app, config)
        await serving.start()
        tasks: set[asyncio.Task[None]] = set()

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            try:
                await self._connection(serving, reader, writer)
            except asyncio.CancelledError:
                # Only the shutdown below cancels this task (its grace is over), and nothing
                # awaits it but that gather: end it quietly. asyncio's own done-callback for
                # it (Python 3.11) logs a task that ends cancelled as an ERROR.
                writer.transport.abort()

        servers = []
        for sock in config.create_sockets().insecure_sockets:
            servers.append(await asyncio.start_server(connected, backlog=config.backlog, sock=sock))
            host, port = sock.getsockname()[:2]
            # Hypercorn's words: scripts and tests wait for this line.
            log.info("Running on http://%s:%d", f"[{host}]" if ":" in host else host, port)
        try:
            await shutdown_trigger()
        finally:
            await serving.closing()  # Hypercorn closes idle keep-alive connections
            for server in servers:
                server.close()
            if tasks:
                _, late = await asyncio.wait(set(tasks), timeout=config.graceful_timeout)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            for server in servers:
                await server.wait_closed()
            await serving.stop()

    async def _connection(
        self,
        serving: Serving,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if self.open >= self.max_connections:
            self.refused += 1
            self._refused.inc()
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "%d connections open (max_connections): refused %d since start",
                    self.open,
                    self.refused,
                )
            with contextlib.suppress(OSError):
                writer.write(self._busy)
                writer.close()
            return
        peer = writer.get_extra_info("peername")
        key: Peer | None = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        deadline = _Deadline(self, key, writer) if key is not None else None
        if deadline is not None and key is not None:
            self._untrusted[key] = deadline
        self.open += 1
        self._gauge.inc()
        try:
            await serving.connection(reader, writer)
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired or (task := asyncio.current_task()) is None:
                raise
            task.uncancel()  # this cancel was the deadline's, and ends here
        finally:
            self.open -= 1
            self._gauge.dec()
            if deadline is not None:
                deadline.cancel()


class _Deadline:
    """Closes one untrusted connection ``head_timeout`` seconds after it was accepted.

    Aborts the transport (the client may read nothing, so a graceful close could wait on it)
    and cancels the connection's task: Hypercorn's server for it would otherwise wait out
    ``keep_alive_timeout`` with the socket already gone.
    """

    def __init__(self, listener: Listener, key: Peer, writer: asyncio.StreamWriter) -> None:
        self.listener = listener
        self.key = key
        self.writer = writer
        self.task = asyncio.current_task()
        self.expired = False
        self.timer = asyncio.get_running_loop().call_later(listener.head_timeout, self._expire)

    def cancel(self) -> None:
        self.timer.cancel()
        if self.listener._untrusted.get(self.key) is self:
            del self.listener._untrusted[self.key]

    def _expire(self) -> None:
        self.cancel()
        self.expired = True
        self.listener._expired.inc()
        self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()
