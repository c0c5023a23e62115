"""Every answer to a request that carries ``x-cortex-request`` carries it back.

cortex numbers the requests it sends on each pooled connection and checks the number an
answer echoes: one that echoes an earlier request's number is a late answer, skipped, so a
stray answer never reaches another client. The echo is added here, outside everything
else, so that the neuron's refusals (401, 503 while draining), its errors and the engines'
answers all carry it. A request without the header gets none (cortex accepts an answer
without it, from a neuron older than this).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ECHO = b"x-cortex-request"


class Echo:
    """ASGI middleware: copy the request's ``x-cortex-request`` into its answer's head."""

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        echo = next((header for header in scope["headers"] if header[0] == ECHO), None)
        if echo is None:
            await self.app(scope, receive, send)
            return

        async def echoed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != ECHO]
                message["headers"] = [*headers, echo]
            await send(message)

        await self.app(scope, receive, echoed)
