"""The engines' own numbers: scraped from each ready engine, for ``/models`` and ``/metrics``.

:meth:`EngineWatch.run` refreshes every ready model's ``running``, ``waiting`` and
``kv_cache_usage`` each ``interval`` seconds (``health_interval``); :meth:`exposition`
scrapes afresh for a Prometheus scrape of the neuron, and the refresh skips a round when such
a scrape has just read every ready engine. Engines are read concurrently, each bounded by
``timeout`` and ``max_bytes``; an engine that does not answer in time (or at all), answers
with more than ``max_bytes`` (logged once until it is back under) or with something that
cannot be read contributes nothing, and its model's numbers become unknown (``None``) until
it answers again. Parsing and rendering run in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from neuron.engine.stats import UNKNOWN, Oversize, load_of, merged, scrape
from neuron.registry import Registry, Slot, State

log = logging.getLogger("neuron.watch")
SCRAPED = frozenset({State.READY, State.SLEEPING})


class EngineWatch:
    def __init__(
        self,
        registry: Registry,
        client: httpx.AsyncClient,
        *,
        interval: float,
        timeout: float,
        max_bytes: int,
    ) -> None:
        self._registry = registry
        self._client = client
        self.interval = interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._scraped_at = -math.inf
        self._oversize: set[str] = set()  # models whose last scrape was over max_bytes

    async def run(self) -> None:
        while True:
            try:
                # A Prometheus scrape of the neuron that just read every engine will do.
                if time.monotonic() - self._scraped_at >= self.interval / 2:
                    await self.scrape_all()
            except Exception:  # the numbers go stale; the neuron and this loop go on
                log.warning("reading the engines' load failed", exc_info=True)
            await asyncio.sleep(self.interval)

    async def scrape_all(self) -> dict[str, list[Metric]]:
        """Each ready or sleeping model's ``vllm:`` families (``[]`` where its engine gave
        none; a sleeper's carry ``vllm:engine_sleep_state``).

        Also refreshes each ready slot's ``load``; a slot that is no longer ready loses it.
        """
        ready = [s for s in self._registry.slots() if s.state in SCRAPED]
        for slot in self._registry.slots():
            if slot.state is not State.READY:
                slot.load = UNKNOWN
        scraped = await asyncio.gather(*(self._scrape(s) for s in ready))
        self._scraped_at = time.monotonic()
        return {s.model_id: families for s, families in zip(ready, scraped, strict=True)}

    async def _scrape(self, slot: Slot) -> list[Metric]:
        """One engine's families; whatever goes wrong, ``[]`` and an unknown load."""
        try:
            families = await scrape(self._client, slot.engine.url, self.timeout, self.max_bytes)
            self._oversize.discard(slot.model_id)
            load = load_of(families)
        except Oversize as exc:
            if slot.model_id not in self._oversize:
                self._oversize.add(slot.model_id)
                log.warning(
                    "engine metrics of %s are larger than engine_metrics_max_bytes (%d): %s; "
                    "not read until they are smaller",
                    slot.model_id,
                    self.max_bytes,
                    exc,
                )
            families, load = [], UNKNOWN
        except Exception:
            log.warning("reading the metrics of %s failed", slot.model_id, exc_info=True)
            families, load = [], UNKNOWN
        # Another scrape or an unload may have run meanwhile; only a still-ready slot keeps it.
        slot.load = load if slot.state is State.READY else UNKNOWN
        return families

    async def exposition(self) -> bytes:
        """Prometheus text of every ready engine's ``vllm:`` metrics, labelled by ``model``."""
        scrapes = await self.scrape_all()
        return await asyncio.to_thread(_render, scrapes)


def _render(scrapes: dict[str, list[Metric]]) -> bytes:
    """Blocking: the text of ``scrapes`` merged; empty if that fails (the neuron's own stay)."""
    try:
        registry = CollectorRegistry()
        registry.register(_Fixed(list(merged(scrapes))))
        return generate_latest(registry)
    except Exception:
        log.warning("the engines' metrics could not be rendered", exc_info=True)
        return b""


class _Fixed:
    """A collector that hands out families already read (prometheus_client's protocol)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
