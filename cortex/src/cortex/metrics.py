"""cortex's Prometheus metrics, on a registry of its own per app instance.

Label values stay bounded: ``model`` is a catalogued or neuron-reported id (anything else
is ``_unknown``), ``node`` a configured neuron name, ``endpoint`` one of the fixed routes,
``key`` a configured API key's name (``_anonymous`` without keys; never the key itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cortex.fleet.state import Node

MIB = 1024 * 1024
LOADS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GAPS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

M = TypeVar("M", Counter, Gauge, Histogram)


class Remembered(Generic[M]):
    """A labelled metric on the hot path: each child is looked up once, then kept in a dict.

    ``metric.labels(...)`` checks the values and takes a lock on every call, three times
    the cost of the dict (bench/README.md, "Figures behind the code"), and a relayed
    request makes six to ten such calls. The values are bounded (see above), so the dict
    is too.
    """

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Tally(Collector):
    """A counter for the routing hot path: ``counts[labels] += 1`` is plain Python, several
    times cheaper than a ``Counter`` child's ``inc()``, which takes a lock (bench/README.md,
    "Figures behind the code"). Everything runs
    on the event loop, the scrape too, so nothing is locked. Its label values are bounded
    like every other metric's (see above)."""

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in list(self.counts.items()):
            family.add_metric(values, count)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labels)


class CortexMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, replica: str = "") -> None:
        self.registry = r = registry or CollectorRegistry()
        # One series naming this replica (``instance`` in cortex.toml): join on it to tell
        # replicas apart (Prometheus's own ``instance`` label is the scrape target).
        Gauge(
            "cortex_replica_info", "This cortex replica's configured name.", ["replica"], registry=r
        ).labels(replica or "cortex").set(1)
        self.requests = Remembered(
            Counter(
                "cortex_requests",
                "Client requests by model, neuron, endpoint, the HTTP status the client got and"
                " API key name (once per request: a retried attempt is not counted).",
                ["model", "node", "endpoint", "status", "key"],
                registry=r,
            )
        )
        self.errors = Remembered(
            Counter(
                "cortex_request_errors",
                "Attempts that failed on cortex's side of the wire, by reason (retried ones too).",
                ["model", "node", "reason"],
                registry=r,
            )
        )
        self.stray = Remembered(
            Counter(
                "cortex_upstream_stray",
                "Neuron connections closed for bytes nobody asked for, by reason: idle (while"
                " pooled), after_answer (past the end of an answer), late (an answer echoing"
                " an earlier request's x-cortex-request, skipped), crossed (echoing one never"
                " sent). None of it reached a client.",
                ["reason"],
                registry=r,
            )
        )
        self.duration = Remembered(
            Histogram(
                "cortex_request_duration_seconds",
                "Time from request to the last byte of the answer.",
                ["model", "endpoint"],
                buckets=LATENCY,
                registry=r,
            )
        )
        self.ttft = Remembered(
            Histogram(
                "cortex_time_to_first_token_seconds",
                "Streaming: time from request to the first chunk of the answer.",
                ["model"],
                buckets=LATENCY,
                registry=r,
            )
        )
        self.inter_chunk = Remembered(
            Histogram(
                "cortex_inter_token_latency_seconds",
                "Streaming: gap between consecutive chunks of an answer.",
                ["model"],
                buckets=GAPS,
                registry=r,
            )
        )
        self.prompt_tokens = Remembered(
            Counter(
                "cortex_prompt_tokens",
                "Prompt tokens, from upstream usage.",
                ["model", "key"],
                registry=r,
            )
        )
        self.completion_tokens = Remembered(
            Counter(
                "cortex_completion_tokens",
                "Completion tokens, from upstream usage.",
                ["model", "key"],
                registry=r,
            )
        )
        self.routing = Tally(
            "cortex_routing_decisions",
            "Requests for a model ready on several neurons, by why their neuron was chosen:"
            " prefix (it holds the prompt's prefix), load (the least loaded), guard (the"
            " prefix's neuron was too loaded).",
            ("model", "reason"),
            registry=r,
        )
        self.in_flight = Remembered(
            Gauge(
                "cortex_inflight_requests", "Requests being relayed.", ["model", "node"], registry=r
            )
        )
        self.neuron_up = Gauge("cortex_neuron_up", "1 if the neuron is up.", ["node"], registry=r)
        self.model_loaded = Gauge(
            "cortex_model_loaded",
            "1 if the model is ready on the neuron, else 0.",
            ["model", "node"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "cortex_gpu_memory_used_bytes", "GPU memory in use.", ["node", "gpu"], registry=r
        )
        self.gpu_memory_free = Gauge(
            "cortex_gpu_memory_free_bytes", "GPU memory free.", ["node", "gpu"], registry=r
        )
        self.gpu_utilization = Gauge(
            "cortex_gpu_utilization_ratio", "GPU busy fraction (0-1).", ["node", "gpu"], registry=r
        )
        self.cold_starts = Counter(
            "cortex_cold_starts",
            "Models cortex loaded on a neuron (on demand, pinned or by hand).",
            ["model", "node"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "cortex_model_load_seconds",
            "Time a load took, as the clients waiting for it saw it.",
            ["model", "node"],
            buckets=LOADS,
            registry=r,
        )
        self.ready_seconds = Histogram(
            "cortex_model_ready_seconds",
            "Time until a model not awake anywhere was ready, by kind (cold load or wake).",
            ["model", "kind"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, *LOADS[2:]),
            registry=r,
        )
        self.wakes = Counter(
            "cortex_wakes",
            "Sleeping models cortex woke on a neuron.",
            ["model", "node"],
            registry=r,
        )
        self.sleeps = Counter(
            "cortex_sleeps",
            "Models cortex put to sleep, by reason (idle).",
            ["model", "node", "reason"],
            registry=r,
        )
        self.evictions = Counter(
            "cortex_evictions",
            "Models cortex unloaded, by reason: lru (making room), idle, sleep_ttl, manual.",
            ["model", "node", "reason"],
            registry=r,
        )
        self.load_failures = Counter(
            "cortex_load_failures",
            "Loads a neuron refused or could not complete.",
            ["model", "node"],
            registry=r,
        )
        self.waiting_for_load = Gauge(
            "cortex_requests_waiting_for_load",
            "Requests waiting for their model to finish loading.",
            ["model"],
            registry=r,
        )
        self.client_connections = Gauge(
            "cortex_client_connections",
            "Client connections open on the API port.",
            registry=r,
        )
        self._loaded_series: dict[str, set[str]] = {}
        # process_cpu_seconds_total and memory: cortex relays on one event loop, so CPU near
        # one core means it is saturated (ops/prometheus/cortex-alerts.yml).
        ProcessCollector(registry=r)

    def observe_node(self, node: Node) -> None:
        self.neuron_up.labels(node.name).set(1 if node.up else 0)
        for model_id, info in node.models.items():
            ready = node.up and info.get("status") == "ready"
            self.model_loaded.labels(model_id, node.name).set(1 if ready else 0)
        # A model the neuron no longer reports (unloaded) loses its series.
        for model_id in self._loaded_series.get(node.name, set()) - node.models.keys():
            self.model_loaded.remove(model_id, node.name)
        self._loaded_series[node.name] = set(node.models)
        if not node.up:
            return
        for device in (node.health or {}).get("devices", []):
            gpu = str(device.get("index"))
            if isinstance(device.get("vram_used_mb"), int | float):
                self.gpu_memory_used.labels(node.name, gpu).set(device["vram_used_mb"] * MIB)
            if isinstance(device.get("vram_free_mb"), int | float):
                self.gpu_memory_free.labels(node.name, gpu).set(device["vram_free_mb"] * MIB)
            if isinstance(device.get("utilization_pct"), int | float):
                self.gpu_utilization.labels(node.name, gpu).set(device["utilization_pct"] / 100)
