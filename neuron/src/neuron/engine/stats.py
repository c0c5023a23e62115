"""What a vLLM engine says about itself on its ``/metrics``: read on demand, bounded in time.

Two uses, one reading:

- the neuron's ``/metrics`` re-exports every ``vllm:`` family of each ready engine, each
  sample with a ``model`` label added (:func:`merged`): one family per name across engines,
  as Prometheus requires;
- ``/models`` reports each model's ``running``, ``waiting`` and ``kv_cache_usage`` (0-1)
  (:func:`load_of`), which cortex routes by.

A scrape that fails, times out or is not Prometheus text gives nothing (:func:`scrape`
returns ``[]``): a dead or stuck engine never fails or holds up the neuron's own answer. A
body over ``max_bytes`` is not read past the cap (:class:`Oversize`), and the text is parsed
in a worker thread (prometheus_client's parser is pure Python, and slow on vLLM's usual
126 KB: bench/README.md, "Figures behind the code"), so neither size nor parsing holds up
the event loop. A gauge that is not a count (NaN, an infinity, a negative number) is
reported as unknown (``None``).

vLLM renamed the KV-cache gauge: ``vllm:kv_cache_usage_perc`` (0.10 on) was
``vllm:gpu_cache_usage_perc`` before; both are read, and both are a fraction (0-1) despite
the name. Several samples of one gauge (data-parallel engines, label ``engine``) are summed
for the request counts, and the fullest cache wins.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("neuron.engine")

PREFIX = "vllm:"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
MODEL_LABEL = "model"


@dataclass(frozen=True)
class EngineLoad:
    """An engine's own view of its work, as of its last scrape; ``None``: not reported."""

    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None

    def public(self) -> dict[str, int | float | None]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "kv_cache_usage": self.kv_cache_usage,
        }


UNKNOWN = EngineLoad()


class Oversize(Exception):
    """The engine's ``/metrics`` is larger than the neuron reads."""


async def scrape(
    client: httpx.AsyncClient, url: str, within: float, max_bytes: int
) -> list[Metric]:
    """The ``vllm:`` families on ``url``/metrics, or ``[]`` if not had ``within`` seconds.

    Raises :class:`Oversize` when the body is over ``max_bytes`` (read no further than that).
    The parse runs in a worker thread.
    """
    body = await _fetch(client, url, within, max_bytes)
    if body is None:
        return []
    return await asyncio.to_thread(parse, body, url)


async def _fetch(
    client: httpx.AsyncClient, url: str, within: float, max_bytes: int
) -> bytes | None:
    try:
        async with (
            asyncio.timeout(within),
            client.stream("GET", f"{url}/metrics", timeout=within) as response,
        ):
            response.raise_for_status()
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise Oversize(f"{declared} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise Oversize(f"over {max_bytes} bytes")
            return bytes(body)
    except (httpx.HTTPError, TimeoutError) as exc:
        log.debug("engine metrics from %s unavailable: %r", url, exc)
        return None


def parse(body: bytes, url: str) -> list[Metric]:
    """The ``vllm:`` families in ``body``; ``[]`` if it is not Prometheus text. Blocking."""
    try:
        text = body.decode("utf-8", errors="replace")
        return [f for f in text_string_to_metric_families(text) if _ours(f)]
    except Exception as exc:  # whatever the engine wrote, the neuron's own scrape goes on
        log.warning("engine metrics from %s are not Prometheus text: %r", url, exc)
        return []


def _ours(family: Metric) -> bool:
    return family.name.startswith(PREFIX)


def load_of(families: Iterable[Metric]) -> EngineLoad:
    """``running``, ``waiting`` and ``kv_cache_usage`` from one engine's scrape; a value that
    is NaN, infinite or negative is ``None``."""
    by_name = {f.name: f for f in families}
    kv = next((by_name[n] for n in KV_USAGE if n in by_name), None)
    kv_values = [s.value for s in kv.samples] if kv else []
    return EngineLoad(
        running=_count(by_name.get(RUNNING)),
        waiting=_count(by_name.get(WAITING)),
        kv_cache_usage=min(1.0, max(kv_values))
        if kv_values and all(map(_sound, kv_values))
        else None,
    )


def _sound(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _count(family: Metric | None) -> int | None:
    if family is None:
        return None
    values = [s.value for s in family.samples if s.name == family.name]
    if not values or not all(map(_sound, values)):
        return None
    return int(sum(values))


def merged(scrapes: dict[str, list[Metric]]) -> Iterator[Metric]:
    """One family per name across engines, each sample labelled with its engine's model."""
    families: dict[str, Metric] = {}
    for model, scraped in scrapes.items():
        for family in scraped:
            out = families.get(family.name)
            if out is None:
                out = families[family.name] = Metric(family.name, family.documentation, family.type)
            elif out.type != family.type:
                continue  # two engine versions disagree: keep the first type seen
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, MODEL_LABEL: model}, s.value, s.timestamp)
    yield from families.values()
