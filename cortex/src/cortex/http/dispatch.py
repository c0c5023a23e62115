"""Which exchange answers a request: the app's direct path for its inference POSTs, else ASGI.

Given to the server from its wiring (:func:`cortex.server.serve`): the ASGI app, the direct
handler the app offers (or none), and the lifespan's state. The connection calls it once per
request head, and knows nothing of either kind of answer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from cortex.http.asgi import AsgiExchange
from cortex.http.direct import Direct, DirectExchange
from cortex.http.exchange import Exchange, Port


class Dispatch:
    """Makes the exchange for each request (see the module)."""

    def __init__(self, app: Any, direct: Direct | None, state: dict[str, Any]) -> None:
        self.app = app
        self.direct = direct
        self.paths = direct.paths if direct is not None else frozenset()
        self.state = state
        """The lifespan's state, copied into each ASGI request's scope."""

    def __call__(
        self,
        port: Port,
        scope: dict[str, Any],
        raw_path: bytes,
        keep_alive: bool,
        expect_continue: bool,
    ) -> Exchange:
        """The exchange for the request whose head made ``scope`` (``path`` not yet set)."""
        direct = self.direct
        if direct is not None and scope["method"] == "POST" and b"%" not in raw_path:
            path = raw_path.decode("latin-1")
            if path in self.paths:
                scope["path"] = path
                exchange = DirectExchange(port, scope, keep_alive, expect_continue)
                exchange.direct = direct
                return exchange
        scope["path"] = unquote(raw_path.decode("latin-1"), encoding="latin-1")
        scope["state"] = self.state.copy()
        asgi = AsgiExchange(port, scope, keep_alive, expect_continue)
        asgi.app = self.app
        return asgi
