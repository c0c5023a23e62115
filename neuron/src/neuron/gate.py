"""Pure ASGI middleware in front of every route: auth, drain refusal, in-flight count.

A request that carries the token (or any request, without one configured) marks its
connection trusted (``on_trusted``: :meth:`neuron.listener.Listener.trust`); a request
refused for the token is answered 401 and its connection closed, so an untrusted
connection never outlives the listener's ``head_timeout``.

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed answers pass through unbuffered and a
client disconnect still reaches the handler.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from neuron.errors import NeuronError, ShuttingDown, Unauthorized
from neuron.lifecycle import Lifecycle

OPEN_PATHS = frozenset({"/health"})
"""Answered without a token (load balancers and cortex probe it)."""
DRAIN_EXEMPT = frozenset({"/health", "/metrics"})
"""Still answered while draining, and not counted as in-flight work."""
NOT_DRAINED = frozenset({"/models/load", "/models/watch"})
"""Not waited for by the drain: an engine start can take minutes, longer than systemd's stop
budget. Deactivation cancels it instead, and the caller gets 409 ``load_cancelled``. A watch
is answered when the drain begins (a change of state)."""


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        lifecycle: Lifecycle,
        on_trusted: Callable[[tuple[str, int] | None], None] | None = None,
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.lifecycle = lifecycle
        self.on_trusted = on_trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        error = self._refusal(scope, path)
        if error is not None:
            response = error.response()
            if isinstance(error, (ShuttingDown, Unauthorized)):
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        if path in DRAIN_EXEMPT or path in NOT_DRAINED:
            await self.app(scope, receive, send)
            return
        self.lifecycle.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave()

    def _refusal(self, scope: Scope, path: str) -> NeuronError | None:
        given = b""
        if self.expected is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
        if self.expected is None or hmac.compare_digest(given, self.expected):
            if self.on_trusted is not None:
                self.on_trusted(scope.get("client"))
        elif path not in OPEN_PATHS:
            reason = "invalid bearer token" if given else "missing bearer token"
            return Unauthorized(f"{reason} (send Authorization: Bearer <token>)")
        if self.lifecycle.draining and path not in DRAIN_EXEMPT:
            return ShuttingDown("this neuron is shutting down; retry on another")
        return None
