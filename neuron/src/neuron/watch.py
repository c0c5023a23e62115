"""The engines' own numbers: scraped from each ready engine, for ``/models`` and ``/metrics``.

:meth:`EngineWatch.run` refreshes every ready model's ``running``, ``waiting`` and
``kv_cache_usage`` each ``interval`` seconds (``health_interval``); :meth:`exposition`
scrapes afresh for a Prometheus scrape of the neuron. Engines are read concurrently, each
bounded by ``timeout``; an engine that does not answer in time (or at all) contributes
nothing, and its model's numbers become unknown (``None``) until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from neuron.engine.stats import UNKNOWN, load_of, merged, scrape
from neuron.registry import Registry, Slot, State

log = logging.getLogger("neuron.watch")


class EngineWatch:
    def __init__(
        self, registry: Registry, client: httpx.AsyncClient, *, interval: float, timeout: float
    ) -> None:
        self._registry = registry
        self._client = client
        self.interval = interval
        self.timeout = timeout

    async def run(self) -> None:
        while True:
            try:
                await self.scrape_all()
            except Exception:  # the numbers go stale; the neuron and this loop go on
                log.warning("reading the engines' load failed", exc_info=True)
            await asyncio.sleep(self.interval)

    async def scrape_all(self) -> dict[str, list[Metric]]:
        """Each ready model's ``vllm:`` families (``[]`` where its engine gave none).

        Also refreshes each ready slot's ``load``; a slot that is no longer ready loses it.
        """
        ready = [s for s in self._registry.slots() if s.state is State.READY]
        for slot in self._registry.slots():
            if slot.state is not State.READY:
                slot.load = UNKNOWN
        scraped = await asyncio.gather(*(self._scrape(s) for s in ready))
        return {s.model_id: families for s, families in zip(ready, scraped, strict=True)}

    async def _scrape(self, slot: Slot) -> list[Metric]:
        families = await scrape(self._client, slot.engine.url, self.timeout)
        # Another scrape or an unload may have run meanwhile; only a still-ready slot keeps it.
        slot.load = load_of(families) if slot.state is State.READY else UNKNOWN
        return families

    async def exposition(self) -> bytes:
        """Prometheus text of every ready engine's ``vllm:`` metrics, labelled by ``model``."""
        scrapes = await self.scrape_all()
        registry = CollectorRegistry()
        registry.register(_Fixed(list(merged(scrapes))))
        return generate_latest(registry)


class _Fixed:
    """A collector that hands out families already read (prometheus_client's protocol)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
