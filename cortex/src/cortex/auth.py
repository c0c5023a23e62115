"""Pure ASGI middleware: API keys (when configured) and refusing new work while draining.

Keys are accepted as ``Authorization: Bearer <key>`` (OpenAI clients) or ``x-api-key``
(Anthropic clients), compared in constant time. Keys never reach logs or metrics.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.errors import CortexError, ShuttingDown, Unauthorized

OPEN_PATHS = frozenset({"/health"})


class Gatekeeper:
    def __init__(self, app: ASGIApp, *, api_keys: list[str], draining: list[bool]) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.draining = draining  # one shared flag, flipped by the signal handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self.refusal(scope)
            if error is not None:
                await error.response(scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> CortexError | None:
        """Why the request in ``scope`` is refused (a bad key, or draining), or None."""
        path: str = scope["path"]
        if self.keys and path not in OPEN_PATHS:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or _bearer(headers.get(b"authorization", b""))
            if not given:
                return Unauthorized(
                    "missing API key (send Authorization: Bearer <key> or x-api-key: <key>)"
                )
            # Compare against every key, always, so timing does not tell which one was close.
            matched = False
            for key in self.keys:
                matched |= hmac.compare_digest(given, key)
            if not matched:
                return Unauthorized("invalid API key")
        if self.draining[0] and path not in OPEN_PATHS:
            return ShuttingDown("this gateway is shutting down; retry shortly", retry_after=5)
        return None


def _bearer(value: bytes) -> bytes:
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""
