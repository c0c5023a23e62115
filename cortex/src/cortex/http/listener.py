"""What the connections of one listening socket share: the app, the limits, the count."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from cortex.http.connection import Connection
from cortex.http.direct import Direct

log = logging.getLogger("cortex.http")


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server (``[gateway]`` in cortex.toml)."""

    max_header_bytes: int = 64 * 1024
    max_header_field_bytes: int = 16 * 1024
    max_connections: int = 8192
    header_timeout: float = 10.0
    keep_alive_timeout: float = 75.0
    send_timeout: float = 120.0
    body_timeout: float = 60.0
    max_body_memory: int = 1024 * 1024 * 1024
    retry_after: int = 5


@dataclass(eq=False)
class Listener:
    """What the connections of one listening socket share."""

    app: Any
    limits: Limits
    loop: asyncio.AbstractEventLoop
    state: dict[str, Any] = field(default_factory=dict)
    """The lifespan's state, copied into each ASGI request's scope."""
    on_count: Any = None
    """Called with the number of open connections whenever it changes (a gauge's ``set``)."""
    connections: set[Connection] = field(default_factory=set)
    refused: set[Connection] = field(default_factory=set)
    stopping: bool = False
    full: bool = False
    """Connections are being refused for now (logged once, when it starts and ends)."""
    turned_away: int = 0
    body_bytes: int = 0
    """Bytes of request bodies received by the requests in progress (``max_body_memory``)."""

    def __post_init__(self) -> None:
        self.direct: Direct | None = getattr(self.app, "direct", None)
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
