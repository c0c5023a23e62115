"""Background tasks that cannot die: each one crashed is logged and started again.

cortex's background work (the poller; the loader's housekeeping: idle unloads and pins)
runs for the life of the process. A bug or a surprise in one of them used to end its task
silently, and with it that part of cortex, until a restart. :func:`supervise` logs the
traceback and starts the task again after a backoff that doubles from ``backoff`` up to
``max_backoff`` while it keeps crashing, and starts from ``backoff`` again once it has run
for ``max_backoff`` seconds. Cancelling the supervising task ends it (and the task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("cortex.supervisor")

BACKOFF = 0.5
MAX_BACKOFF = 30.0


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    backoff: float = BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> None:
    """Run ``run()`` until cancelled, starting it again whenever it raises or returns."""
    loop = asyncio.get_running_loop()
    delay = backoff
    while True:
        started = loop.time()
        try:
            await run()
        except Exception:
            log.exception("%s crashed; starting it again in %gs", name, delay)
        else:
            log.error("%s stopped; starting it again in %gs", name, delay)
        if loop.time() - started >= max_backoff:
            delay = backoff
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff)
