"""The one place the neuron uses Hypercorn below its public ``serve`` function.

Hypercorn (0.17, 0.18) has no connection cap and no head timeout, and its public
``hypercorn.asyncio.serve`` owns the accept step, so :mod:`neuron.listener` accepts
connections itself and hands each to Hypercorn's per-connection server exactly as ``serve``
does. That needs five names from Hypercorn's modules that its documentation does not
promise: ``TCPServer``, ``WorkerContext``, ``Lifespan``, ``wrap_app`` and ``LifespanState``.
They are imported and called here only, and :func:`check` (run at import, so at the
neuron's start, and by ``neuron/tests/test_hypercorn_seam.py``) verifies their call
signatures: a Hypercorn that changed them stops the neuron at start with one clear message
instead of failing each connection. Tested with Hypercorn 0.17.3 and 0.18.0.

The public alternatives were weighed: ``Config.read_timeout`` restarts on every byte, so a
client trickling its head is never closed by it; nothing in ``Config`` caps connections; a
proxy of our own in front of Hypercorn would copy every byte of every stream once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import LifespanState
from hypercorn.utils import wrap_app
from starlette.types import ASGIApp

TESTED = ("0.17.3", "0.18.0")
"""The Hypercorn versions this module was run against (its tests and the chaos tests)."""

EXPECTED: dict[str, tuple[Callable[..., Any], list[str]]] = {
    "hypercorn.asyncio.tcp_server.TCPServer": (
        TCPServer,
        ["app", "loop", "config", "context", "state", "reader", "writer"],
    ),
    "hypercorn.asyncio.lifespan.Lifespan": (Lifespan, ["app", "config", "loop", "lifespan_state"]),
    "hypercorn.asyncio.worker_context.WorkerContext": (WorkerContext, ["max_requests"]),
    "hypercorn.utils.wrap_app": (wrap_app, ["app", "wsgi_max_body_size", "mode"]),
}
"""Each internal name and the parameter names the neuron passes, in order."""


class HypercornChanged(RuntimeError):
    """The installed Hypercorn's internals are not what :mod:`neuron.listener` drives."""


def check() -> None:
    """Raise :class:`HypercornChanged` naming every internal whose signature changed."""
    problems = []
    for name, (obj, params) in EXPECTED.items():
        found = [p for p in inspect.signature(obj).parameters if p != "self"]
        if found != params:
            problems.append(f"{name}{tuple(found)} (expected {tuple(params)})")
    for method in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        if not inspect.iscoroutinefunction(getattr(Lifespan, method, None)):
            problems.append(f"hypercorn.asyncio.lifespan.Lifespan.{method} is gone")
    if problems:
        raise HypercornChanged(
            f"Hypercorn {version('hypercorn')} changed internals the neuron's listener uses "
            f"(tested with {', '.join(TESTED)}): " + "; ".join(problems)
        )


check()


class Serving:
    """One app served by Hypercorn, one accepted connection at a time.

    :meth:`start` runs the app's lifespan startup; :meth:`connection` serves one connection
    until it ends; :meth:`closing` tells idle keep-alive connections to close;
    :meth:`stop` runs the lifespan shutdown.
    """

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.config = config
        self._app = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        self._state: LifespanState = {}
        self._context = WorkerContext(None)
        self._lifespan: Lifespan | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._lifespan = Lifespan(self._app, self.config, loop, self._state)
        self._task = loop.create_task(self._lifespan.handle_lifespan())
        await self._lifespan.wait_for_startup()
        if self._task.done() and (error := self._task.exception()) is not None:
            raise error

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        await TCPServer(self._app, loop, self.config, self._context, self._state, reader, writer)

    async def closing(self) -> None:
        await self._context.terminated.set()

    async def stop(self) -> None:
        if self._lifespan is not None:
            await self._lifespan.wait_for_shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
