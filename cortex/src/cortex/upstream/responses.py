"""The two responses the relay returns: a whole answer, and a stream that stops when the
client goes. Both go to the client as the neuron sent them (less hop-by-hop headers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cortex.upstream.headers import returned


class Relayed(StreamingResponse):
    """A streamed answer that stops when the client goes and runs ``on_close`` however it ends.

    Starlette's own ``StreamingResponse`` watches for the disconnect in an anyio task group,
    a sixth of a stream's set-up in a burst (bench/README.md, "Figures behind the code").
    This watches with one plain asyncio task and cancels the stream itself, as Starlette
    does. And where
    Starlette's cancel comes before the body iterator started, the iterator's own
    ``finally`` never runs: ``on_close`` here always does.
    """

    def __init__(
        self,
        content: AsyncIterable[bytes],
        *,
        on_close: Callable[[], None],
        raw_headers: list[tuple[bytes, bytes]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(content, **kw)
        if raw_headers:  # as the neuron sent them: not decoded and encoded again
            self.raw_headers = raw_headers + self.raw_headers
        self.on_close = on_close
        """Run once the answer has ended, however it ended (cortex's server calls it too)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside the server's task
        cancel = task.cancel
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            cancel()  # lands in stream_response below: the only place this task waits

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone or task.uncancel():  # cancelled by the server too: let it through
                raise
        finally:
            watcher.cancel()
            self.on_close()


class Whole(Response):
    """A whole answer: the neuron's bytes, and its headers less the hop-by-hop ones.

    Starlette's ``Response.__init__`` renders a body and builds headers from a mapping; both
    are at hand already here, so it is not called (bench/README.md, "Figures behind the code").
    """

    def __init__(self, body: bytes, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        headers = returned(raw_headers)
        if not (status < 200 or status in (204, 304)):  # as Starlette's Response
            headers.append((b"content-length", b"%d" % len(body)))
        self.raw_headers = headers
