"""The HTTP server under cortex's two ASGI apps: uvicorn with httptools, on sockets cortex binds.

Why uvicorn and not Hypercorn (the rest of the project's server): on the gateway's one core,
Hypercorn with its pure-Python h11 parser cost 0.25 ms of CPU per relayed request and made a
200-stream burst's time to first token 124 ms p99 against 37 ms direct; uvicorn with the
httptools (llhttp, in C) parser, same app, same machine, 0.13 ms and 76 ms
(``bench/README.md``). The neuron stays on Hypercorn: it carries one host's traffic.

What the switch must not lose, and where it is kept:

- A long accept backlog (``LISTEN_BACKLOG``): the sockets are bound here, so a port that is
  taken is a one-line error, not a server's ``sys.exit`` from deep inside start-up.
- A drain: when ``stop`` is set the listener closes, idle keep-alive connections close, and
  requests in flight get ``graceful`` seconds to finish before they are cancelled.
- A cap on the request head. h11 refused heads over 16 KiB; httptools has no cap, so
  :class:`_Protocol` refuses a request line plus headers over ``MAX_HEAD_BYTES`` with a 400.
- cortex's own signal handling: uvicorn's is switched off (cortex flips its draining flag
  first, then sets ``stop``).

Inference POSTs skip ASGI (:class:`_DirectCycle`). An app that has a ``direct`` attribute
(:class:`Direct`; cortex's API app has) gets those requests as one call with the body in
hand, and hands back a Starlette response, which is written straight to the socket: a whole
answer in one write, a stream as chunks with the socket's flow control. uvicorn's ASGI cycle
(message dicts, a ``receive`` per body piece, a second write for the body, header checks on
headers cortex built itself) cost about a fifth of cortex's CPU per request. uvicorn still
owns the connection: parsing, keep-alive, pipelining, the head cap, the drain. A client that
goes away cancels the request's task, which drops the upstream connection.

A stream whose body can push itself (:class:`Pipe`: the relay's streams) is written from the
neuron connection's own callback, piece by piece, with no task woken per piece. When the
client's socket fills up, the stream is told to stop reading from the neuron until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httptools
import uvicorn
from starlette.responses import Response, StreamingResponse
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from cortex.routes.body import BodyReader

log = logging.getLogger("cortex")

LISTEN_BACKLOG = 4096
"""Connections the kernel queues before cortex accepts them (capped by net.core.somaxconn)."""
MAX_HEAD_BYTES = 64 * 1024
"""The request line and headers of one request, together."""
KEEP_ALIVE_S = 75
"""An idle client connection stays open this long (longer than common load balancers' 60 s)."""


_UVICORN_STARTS_TASKS = hasattr(HttpToolsProtocol, "_start_asgi_task")
"""uvicorn 0.38 and earlier start a cycle's task inline; later releases through this method."""


class Direct(Protocol):
    """Requests an app answers without ASGI: POSTs to ``paths``."""

    paths: frozenset[str]

    async def __call__(self, scope: dict[str, Any], read: BodyReader) -> Response:
        """The response to the request in ``scope`` (an ASGI HTTP scope); never raises."""
        ...


class Pipe(Protocol):
    """A streamed body that pushes itself: the body iterator of a stream cortex relays."""

    async def pipe(self, send: Callable[[bytes], None]) -> None:
        """Call ``send`` with each piece as it comes (from a callback); return at the end."""
        ...

    def writable(self, yes: bool) -> None:
        """The client's connection can take more (True) or cannot for now (False)."""
        ...


class HeadTooLarge(Exception):
    """Raised inside httptools' header callbacks; it becomes a parser error there."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a cap on the size of a request's head."""

    _head = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head += size
        if self._head > MAX_HEAD_BYTES:
            # httptools turns this into a parser error; uvicorn answers 400 and closes.
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._head > MAX_HEAD_BYTES:
            msg = f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        direct: Direct | None = getattr(self.config.app, "direct", None)
        if (
            direct is None
            or self.parser.get_method() != b"POST"
            or self.parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            super().on_headers_complete()
            return
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if path not in direct.paths:  # (a path with %-escapes is never one of them)
            super().on_headers_complete()
            return
        # What uvicorn's own on_headers_complete does, with _DirectCycle for the cycle.
        http_version = self.parser.get_http_version()
        scope = self.scope
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        existing = self.cycle
        self.cycle = cycle = _DirectCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        cycle.direct = direct
        if existing is None or existing.response_complete:
            self._start(cycle)
        else:  # pipelined behind a request still being answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def _start(self, cycle: _DirectCycle) -> None:
        if _UVICORN_STARTS_TASKS:
            self._start_asgi_task(cycle, self.app)
            return
        task = self.loop.create_task(cycle.run_asgi(self.app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, _DirectCycle):
            cycle.client_gone()


class _DirectCycle(RequestResponseCycle):
    """One inference request: the body read in place, the response written by hand."""

    direct: Direct
    task: asyncio.Task[None] | None = None

    async def run_asgi(self, app: Any) -> None:
        if self.disconnected:  # gone before its task first ran
            return
        self.task = asyncio.current_task()
        try:
            response = await self.direct(self.scope, self.read)  # type: ignore[arg-type]
            if isinstance(response, StreamingResponse):
                await self._stream(response)  # which ends it, sent or not
            elif not self.gone():
                self._whole(response)
        except asyncio.CancelledError:
            if not self.disconnected:  # cancelled by the server (shutdown): let it through
                raise
        except Exception as exc:
            self.logger.error("error while answering %s", self.scope["path"], exc_info=exc)
            if not self.response_started and not self.disconnected:
                await self.send_500_response()
            else:
                self.transport.close()
        finally:
            self.task = None
            self.on_response = lambda: None

    def gone(self) -> bool:
        """The client has gone, or its connection is closing: nothing more may be written.

        On uvloop a transport whose connection broke is closed a moment before
        ``connection_lost`` sets ``disconnected``, and a write in between raises.
        """
        return self.disconnected or self.transport.is_closing()

    def client_gone(self) -> None:
        """The connection closed: stop working on an answer nobody will read."""
        if self.task is not None and not self.response_complete:
            self.task.cancel()

    async def read(self, limit: int) -> bytes | None:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        while self.more_body:
            if len(self.body) > limit:
                return None
            if self.disconnected:
                raise asyncio.CancelledError  # the task is being cancelled anyway
            self.flow.resume_reading()  # the protocol pauses reading above 64 KiB unread
            await self.message_event.wait()
            self.message_event.clear()
        if len(self.body) > limit:
            return None
        body = bytes(self.body)
        self.body = bytearray()
        return body

    def _head(self, response: Response, extra: bytes = b"") -> bytes:
        self.response_started = True
        self.waiting_for_100_continue = False
        status = response.status_code
        parts = [STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status]
        closing = False
        for name, value in response.raw_headers:
            parts += (name, b": ", value, b"\r\n")
            if name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                closing = True
        if not self.keep_alive and not closing:
            parts.append(b"connection: close\r\n")
        parts += (extra, b"\r\n")
        return b"".join(parts)

    def _whole(self, response: Response) -> None:
        self.transport.write(self._head(response) + response.body)
        self._complete()

    async def _stream(self, response: StreamingResponse) -> None:
        chunked = self.scope["http_version"] == "1.1"
        if not chunked:  # HTTP/1.0 has no chunked encoding: the end of the stream closes
            self.keep_alive = False
        body: Any = response.body_iterator
        pushed = hasattr(body, "pipe")
        try:
            if self.gone():
                return
            self.transport.write(
                self._head(response, b"transfer-encoding: chunked\r\n" if chunked else b"")
            )
            if pushed:
                await self._pipe(body, chunked)
            else:
                async for piece in body:
                    if not piece:
                        continue
                    if self.flow.write_paused:
                        await self.flow.drain()
                    if self.gone():
                        return
                    data = piece if isinstance(piece, bytes) else piece.encode()
                    self.transport.write(_framed(data, chunked))
            if self.gone():
                return
            if chunked:
                self.transport.write(b"0\r\n\r\n")
            self._complete()
        finally:
            if not pushed:
                await body.aclose()
            on_close: Callable[[], None] | None = getattr(response, "on_close", None)
            if on_close is not None:
                on_close()

    async def _pipe(self, body: Pipe, chunked: bool) -> None:
        """A stream that pushes itself: each piece is written from the neuron's callback.

        When the client's socket fills up, ``body`` is told to stop (it stops reading from
        the neuron) until it drains; the flow control is the connection's, so a request
        pipelined behind this one does not take it over.
        """
        transport, flow = self.transport, self.flow
        drained: asyncio.Task[None] | None = None

        async def until_drained() -> None:
            nonlocal drained
            try:
                await flow.drain()  # uvicorn also sets it when the connection is lost
            finally:
                drained = None
            body.writable(True)

        def held_back() -> None:
            nonlocal drained
            if flow.write_paused and drained is None:
                body.writable(False)
                drained = asyncio.ensure_future(until_drained())

        def send(data: bytes) -> None:
            if data and not self.gone():
                transport.write(_framed(data, chunked))
                held_back()

        held_back()
        try:
            await body.pipe(send)
        finally:
            if drained is not None:
                drained.cancel()

    def _complete(self) -> None:
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


def _framed(data: bytes, chunked: bool) -> bytes:
    """One piece of a streamed body as it goes on the wire (a chunk, unless HTTP/1.0)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # cortex installs its own handlers (cli.py)


def bind(listen: str) -> socket.socket:
    """A listening socket for ``HOST:PORT`` (``[::]:PORT`` for IPv6)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # accepted sockets inherit this one's. Without it Nagle holds a stream's small chunks
    # back until the client's delayed ACK (up to 40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(
    app: Any, sock: socket.socket, *, stop: asyncio.Event, graceful: float, lifespan: bool
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then drain for up to ``graceful`` s."""
    config = uvicorn.Config(
        app,
        http=_Protocol,
        loop="none",  # cortex runs its own (uvloop when installed)
        ws="none",
        interface="asgi3",
        lifespan="on" if lifespan else "off",
        log_config=None,  # cortex's logging.basicConfig stays in charge
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting middleware on every request
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(1, round(graceful)),
        backlog=LISTEN_BACKLOG,
    )
    server = _Server(config)
    if not log.isEnabledFor(logging.DEBUG):  # its start/stop chatter, twice (two listeners)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    async def exit_on_stop() -> None:
        await stop.wait()
        server.should_exit = True

    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d", host, port)
    watcher = asyncio.ensure_future(exit_on_stop())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
    if not server.started:
        raise RuntimeError(f"the server on {host}:{port} did not start")
