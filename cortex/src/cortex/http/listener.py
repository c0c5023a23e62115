"""What the connections of one listening socket share: the limits, the count, the dispatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from cortex.errors import CortexError
from cortex.http.connection import Connection, Dispatch
from cortex.http.exchange import Budget
from cortex.http.limits import Limits

__all__ = ["Limits", "Listener"]

log = logging.getLogger("cortex.http")


class Listener:
    """What the connections of one listening socket share (a :class:`~cortex.http.connection.Host`).

    ``dispatch`` makes the exchange for each request (:class:`~cortex.http.dispatch.Dispatch`),
    ``render`` the whole answer for a refusal of the server's own; ``on_count`` is called
    with the number of open connections whenever it changes (a gauge's ``set``).
    """

    def __init__(
        self,
        dispatch: Dispatch,
        limits: Limits,
        loop: asyncio.AbstractEventLoop,
        *,
        render: Callable[[CortexError], bytes],
        on_count: Callable[[int], Any] | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.loop = loop
        self.render = render
        self.on_count = on_count
        self.budget = Budget(limits.max_body_memory)
        self.connections: set[Connection] = set()
        self.refused: set[Connection] = set()
        self.stopping = False
        self.full = False
        """Connections are being refused for now (logged once, when it starts and ends)."""
        self.turned_away = 0
        self.quiet = asyncio.Event()
        """Set once stopping and no answer is under way any more."""

    def stop(self) -> None:
        """Refuse new connections and requests; close each connection once it is idle."""
        self.stopping = True
        for conn in list(self.connections):
            conn.shutdown()
        self.settled()

    def settled(self) -> None:
        """An answer ended or a connection closed: while stopping, see if all is quiet."""
        if self.stopping and all(conn.running is None for conn in self.connections):
            self.quiet.set()

    def protocol(self) -> Connection:
        return Connection(self)

    def opened(self, conn: Connection) -> bool:
        """Count ``conn`` in, or refuse it (False) when ``max_connections`` are open."""
        if self.stopping or len(self.connections) >= self.limits.max_connections:
            self.refused.add(conn)
            self.turned_away += 1
            if not self.full and not self.stopping:
                self.full = True
                log.warning(
                    "%d client connections are open (gateway.max_connections): new ones get 503",
                    len(self.connections),
                )
            return False
        self.connections.add(conn)
        self._counted()
        return True

    def closed(self, conn: Connection) -> None:
        if conn in self.refused:
            self.refused.discard(conn)
            return
        self.connections.discard(conn)
        self._counted()
        if self.stopping:
            self.settled()
        if self.full and len(self.connections) < self.limits.max_connections * 0.9:
            self.full = False
            log.warning("accepting connections again (%d were refused)", self.turned_away)
            self.turned_away = 0

    def _counted(self) -> None:
        if self.on_count is not None:
            self.on_count(len(self.connections))
