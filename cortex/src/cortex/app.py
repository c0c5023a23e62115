"""``create_app(settings)``: the API app and the metrics app, with everything built once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cortex.auth import Gatekeeper, Keyring
from cortex.errors import CortexError, MethodNotAllowed, RouteNotFound, ShuttingDown, sse_error
from cortex.fleet.loader import Loader
from cortex.fleet.poller import Poller
from cortex.fleet.routing import Router
from cortex.fleet.state import Fleet, Node
from cortex.metrics import CortexMetrics
from cortex.routes import admin
from cortex.routes import fleet as fleet_routes
from cortex.routes.body import BodyReader
from cortex.settings import Catalogue, CortexSettings
from cortex.supervisor import supervise
from cortex.upstream.client import make_session
from cortex.upstream.relay import PATHS, Call, handle, relay
from cortex.upstream.wire import Connector, Limits, Upstream, tcp

log = logging.getLogger("cortex.app")


@dataclass(eq=False)
class Gateway:
    """Everything one cortex process owns; handlers reach it as ``request.app.state.gateway``."""

    settings: CortexSettings
    fleet: Fleet
    metrics: CortexMetrics
    session: aiohttp.ClientSession
    """Polls and loads."""
    upstream: Upstream
    """The relay's requests."""
    poller: Poller
    loader: Loader
    router: Router
    draining: list[bool] = field(default_factory=lambda: [False])
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    _turn: int = 0

    def next_turn(self) -> int:
        self._turn += 1
        return self._turn

    def enter(self, call: Call, node: Node) -> None:
        node.in_flight += 1
        node.model_in_flight[call.model] = node.model_in_flight.get(call.model, 0) + 1
        # Only prefix routing reads it. A /v1/responses stream's first events (created, in
        # progress) come before any token, so they would say nothing: not counted.
        if self.router.prefix and call.path != "/v1/responses":
            node.model_waiting[call.model] = node.model_waiting.get(call.model, 0) + 1
            call.waiting = True
        node.last_used[call.model] = call.started
        call.node = node.name
        self.metrics.in_flight.labels(call.label, node.name).inc()

    def leave(
        self, call: Call, node: Node, status: int, reason: str | None, *, retried: bool = False
    ) -> None:
        """End one attempt of ``call`` on ``node`` with ``status`` (and an error reason).

        ``cortex_requests_total`` counts what the client got, once: an attempt that is
        ``retried`` on another neuron is not counted there, only (by ``reason``) in
        ``cortex_request_errors_total``, which counts failed attempts.
        """
        node.in_flight -= 1
        node.model_in_flight[call.model] -= 1
        if call.waiting:  # no answer byte came (or not a stream): no longer waiting
            call.waiting = False
            node.model_waiting[call.model] -= 1
        now = time.monotonic()
        node.last_used[call.model] = now
        m = self.metrics
        m.in_flight.labels(call.label, node.name).dec()
        if not retried:
            m.requests.labels(call.label, node.name, call.path, str(status), call.key).inc()
        if reason:
            m.errors.labels(call.label, node.name, reason).inc()
            return
        m.duration.labels(call.label, call.path).observe(now - call.started)
        if call.usage.prompt:
            m.prompt_tokens.labels(call.label, call.key).inc(call.usage.prompt)
        if call.usage.completion:
            m.completion_tokens.labels(call.label, call.key).inc(call.usage.completion)


def build(settings: CortexSettings, catalogue: Catalogue, *, connector: Connector = tcp) -> Gateway:
    """Everything one cortex owns; ``connector`` opens the relay's connections to neurons
    (:class:`cortex.upstream.memory.MemoryNeuron` serves them in memory, for tests)."""
    metrics = CortexMetrics(replica=settings.instance)
    fleet = Fleet.build(settings.neurons, catalogue)
    session = make_session(settings.gateway)
    poller = Poller(fleet, session, settings.poll, metrics)
    router = Router(settings.routing, metrics)
    router.watch(fleet)
    return Gateway(
        settings=settings,
        fleet=fleet,
        metrics=metrics,
        session=session,
        upstream=Upstream(
            connect_timeout=settings.gateway.connect_timeout,
            idle_timeout=settings.gateway.idle_timeout,
            keepalive=settings.gateway.upstream_idle_timeout,
            resolve_every=settings.gateway.resolve_every,
            connector=connector,
            limits=Limits.of(settings.gateway),
            stray=lambda reason: metrics.stray.labels(reason).inc(),
        ),
        poller=poller,
        loader=Loader(fleet, session, settings, metrics, poller),
        router=router,
    )


def create_app(gateway: Gateway) -> Api:
    """The API app (port 31313); its lifespan runs the poller and closes the client.

    Over ASGI the stack is ``Gatekeeper`` (keys, roles, drain) → Starlette. On cortex's own server
    (``cortex.server``) inference POSTs skip ASGI and go to :class:`DirectRelay`, which
    asks the same ``Gatekeeper`` first.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = asyncio.create_task(supervise("poller", gateway.poller.run), name="poller")
        with contextlib.suppress(TimeoutError):
            # A first view of the fleet before serving, but never block start on a dead neuron.
            await asyncio.wait_for(gateway.poller.polled.wait(), gateway.settings.poll.timeout + 1)
        loader = asyncio.create_task(
            supervise("housekeeping", gateway.loader.run), name="housekeeping"
        )
        try:
            yield
        finally:
            for task in (loader, poller):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await gateway.session.close()
            gateway.upstream.close()

    routes = [
        Route("/health", fleet_routes.health, methods=["GET"]),
        Route("/v1/models", fleet_routes.models, methods=["GET"]),
        Route("/fleet", fleet_routes.fleet, methods=["GET"]),
        Route("/admin/models/load", admin.load, methods=["POST"]),
        Route("/admin/models/unload", admin.unload, methods=["POST"]),
        *(Route(path, relay, methods=["POST"]) for path in PATHS),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            CortexError: _cortex_error,
            404: _not_found,
            405: _not_allowed,
            Exception: _internal_error,
        },
    )
    app.state.gateway = gateway
    gatekeeper = Gatekeeper(
        app,
        keyring=Keyring(gateway.settings.auth),
        user_paths=[*PATHS, "/v1/models"],
        draining=gateway.draining,
    )
    return Api(gatekeeper, DirectRelay(gateway, gatekeeper))


class Api:
    """cortex's API app: ASGI, plus ``direct`` for the server's inference fast path."""

    def __init__(self, app: Gatekeeper, direct: DirectRelay) -> None:
        self.app = app
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class DirectRelay:
    """Inference POSTs, as :class:`cortex.server.Direct`: keys and drain first, then the relay.

    Errors are rendered exactly as the Starlette app's handlers render them.
    """

    def __init__(self, gateway: Gateway, gatekeeper: Gatekeeper) -> None:
        self.gateway = gateway
        self.gatekeeper = gatekeeper
        self.paths = frozenset(PATHS)

    async def __call__(self, scope: Scope, read: BodyReader) -> Response:
        path: str = scope["path"]
        refusal = self.gatekeeper.refusal(scope)
        if refusal is not None:
            return refusal.response(path)
        try:
            return await handle(self.gateway, scope, read)
        except CortexError as exc:
            return exc.response(path)
        except Exception as exc:
            return _internal("POST", path, exc)

    def cut(self, scope: Scope) -> bytes:
        """The event that ends a stream still running when the drain runs out."""
        error = ShuttingDown(
            "this gateway shut down before the answer was complete "
            f"(gateway.drain_timeout = {self.gateway.settings.gateway.drain_timeout:g}s)"
        )
        return sse_error(error, scope["path"])


def create_metrics_app(gateway: Gateway) -> Starlette:
    """The Prometheus app (port 31314)."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])


async def _cortex_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, CortexError):
        return exc.response(request.url.path)
    return await _internal_error(request, exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    error = RouteNotFound(f"no route for {request.method} {request.url.path}")
    return error.response(request.url.path)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    return error.response(request.url.path)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _internal(request.method, request.url.path, exc)


def _internal(method: str, path: str, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return CortexError("internal error").response(path)
