"""The ASGI lifespan protocol: the app's startup before the first request, its shutdown after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("cortex.http")


class Lifespan:
    """The ASGI lifespan protocol: the app's startup before serving, its shutdown after."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._started: asyncio.Future[str | None] = loop.create_future()
        self._stopped: asyncio.Future[str | None] = loop.create_future()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's startup; RuntimeError if it fails."""
        self._task = asyncio.create_task(self._main(), name="lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        either: set[asyncio.Future[Any]] = {self._started, self._task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        failure = self._started.result() if self._started.done() else "the app ended its lifespan"
        if failure is not None:
            # Starlette sends a whole traceback (and logs it): its last line says what failed.
            lines = [line for line in failure.strip().splitlines() if line.strip()]
            raise RuntimeError(f"the app did not start: {lines[-1] if lines else failure}")

    async def shutdown(self) -> None:
        """Run the app's shutdown (logged, not raised, if it fails)."""
        task = self._task
        if task is None or task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        either: set[asyncio.Future[Any]] = {self._stopped, task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if self._stopped.done() and self._stopped.result() is not None:
            log.error("the app's shutdown failed: %s", self._stopped.result())
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as exc:
            log.error("the app's lifespan failed", exc_info=exc)
            for done in (self._started, self._stopped):
                if not done.done():
                    done.set_result(f"{type(exc).__name__}: {exc}")

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup."):
            self._started.set_result(
                message.get("message", "failed") if kind.endswith("failed") else None
            )
        elif kind.startswith("lifespan.shutdown."):
            self._stopped.set_result(
                message.get("message", "failed") if kind.endswith("failed") else None
            )
