"""cortex's HTTP server without sockets: a connection fed bytes through an in-memory transport.

The seam is the protocol itself (as uvicorn's ``tests/protocols/test_http.py`` tests its
own): bytes go in through ``data_received``, what the server writes is collected, and the
test asserts on exact bytes. ``Date`` values are replaced by ``X`` for comparison.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from cortex.http.connection import Connection
from cortex.http.dispatch import Dispatch
from cortex.http.head import error_answer
from cortex.http.limits import Limits
from cortex.http.listener import Listener
from cortex.routes.body import BodyReader

DATE = re.compile(rb"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


class Wire(asyncio.Transport):
    """An in-memory transport: what the server writes, and how it paused, closed or half-closed."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.eof = False
        self.reading = True
        self.aborted = False
        self.buffered = 0
        """What the test says is still unsent (``get_write_buffer_size``)."""
        self.protocol: Connection | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed and not self.eof, "written after close"
        self.out += data

    def close(self) -> None:
        """As asyncio's: the connection is lost once what is still buffered has been sent."""
        if not self.closed:
            self.closed = True
            if not self.buffered:
                self._lose()

    def abort(self) -> None:
        """As asyncio's: lost at once, whatever is still buffered."""
        if not self.aborted:
            self.aborted = True
            if not self.closed or self.buffered:
                self.closed = True
                self._lose()

    def _lose(self) -> None:
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 31313)}.get(
            name, default
        )

    def take(self) -> bytes:
        """What was written since the last take, with ``Date`` values as ``X``."""
        out = DATE.sub(b"date: X\r\n", bytes(self.out))
        self.out.clear()
        return out


class Echo:
    """An app for the wire tests: ASGI answers that echo the request, and a direct path.

    ``/stream`` (ASGI) answers in pieces; ``/slow`` waits for ``release``. The direct path
    (POST ``/direct``, ``/direct-stream``, ``/direct-slow``, ``/early``) echoes the body.
    """

    def __init__(self) -> None:
        self.direct = EchoDirect()
        self.scopes: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.cancelled: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        try:
            if path == "/slow":
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(path)
            raise
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for piece in (b"one", b"two"):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = json.dumps({"method": scope["method"], "path": path, "body": body.decode()})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.encode()})


class EchoDirect:
    paths = frozenset({"/direct", "/direct-stream", "/direct-slow", "/early"})

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled: list[str] = []
        self.started: list[str] = []

    async def __call__(self, scope: dict[str, Any], read: BodyReader) -> Response:
        path = scope["path"]
        self.started.append(path)
        if path == "/early":  # refused before the body is read, as a 413 or 401 is
            return Response(b"no", 413)
        body = await read(1 << 20)
        assert body is not None
        if path == "/direct-slow":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(path)
                raise
        if path == "/direct-stream":
            return StreamingResponse(self._pieces(body), media_type="text/event-stream")
        return Response(body, media_type="text/plain")

    async def _pieces(self, body: bytes) -> AsyncIterator[bytes]:
        yield b"data: " + body + b"\n\n"
        await self.release.wait()
        yield b"data: end\n\n"

    def cut(self, scope: dict[str, Any]) -> bytes:
        return b"data: cut\n\n"


def connect(app: Any, **limits: Any) -> tuple[Connection, Wire, Listener]:
    """A connection to ``app`` just opened, with ``limits`` (``Limits`` fields) in force; the
    app's ``direct`` attribute, if it has one, is its direct path (as ``cortex serve`` wires
    the API app's)."""
    dispatch = Dispatch(app, getattr(app, "direct", None), {})
    listener = Listener(dispatch, Limits(**limits), asyncio.get_running_loop(), render=error_answer)
    conn = listener.protocol()
    wire = Wire()
    wire.protocol = conn
    conn.connection_made(wire)
    return conn, wire, listener


async def settle() -> None:
    """Let the tasks the connection started run as far as they can."""
    for _ in range(10):
        await asyncio.sleep(0)
