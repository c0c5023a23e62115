"""The neuron's Prometheus metrics, on a registry of its own (one per app: tests don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from neuron.discovery import DeviceSample

MIB = 1024 * 1024
STATES = ("loading", "ready", "unloading", "failed", "sleeping", "waking")
WAKE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)


class NeuronMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.models = Gauge("neuron_models", "Models by lifecycle state.", ["state"], registry=r)
        self.load_seconds = Histogram(
            "neuron_model_load_seconds",
            "Time from load request to a healthy engine.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            "neuron_model_load_failures", "Loads that ended failed.", ["model"], registry=r
        )
        self.sleeps = Counter(
            "neuron_model_sleeps",
            "Models put to sleep, by outcome (ok, failed: the engine was stopped).",
            ["model", "outcome"],
            registry=r,
        )
        self.wakes = Counter(
            "neuron_model_wakes",
            "Wakes by outcome (ok; failed or canary_mismatch: the model was loaded afresh).",
            ["model", "outcome"],
            registry=r,
        )
        self.wake_seconds = Histogram(
            "neuron_model_wake_seconds",
            "Time from a wake's start to an engine ready again (canary included).",
            ["model"],
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "neuron_requests_in_flight", "Inference requests being served.", ["model"], registry=r
        )
        self.requests = Counter(
            "neuron_requests",
            "Inference requests by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.engine_exits = Counter(
            "neuron_engine_exits",
            "Engine processes that ended, by reason (stopped = unloaded, crashed = on its own).",
            ["model", "reason"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "neuron_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"], registry=r
        )
        self.gpu_memory_total = Gauge(
            "neuron_gpu_memory_total_bytes", "GPU memory in all.", ["gpu"], registry=r
        )
        self.gpu_utilization = Gauge(
            "neuron_gpu_utilization_ratio", "GPU busy fraction (0-1).", ["gpu"], registry=r
        )
        self.gpu_temperature = Gauge(
            "neuron_gpu_temperature_celsius", "GPU temperature.", ["gpu"], registry=r
        )
        self.connections = Gauge(
            "neuron_connections_open", "HTTP connections open to the neuron.", registry=r
        )
        self.connections_closed = Counter(
            "neuron_connections_closed",
            "Connections the neuron closed before trusting them, by reason (max_connections: "
            "refused with 503; head_timeout: no request with the token in time).",
            ["reason"],
            registry=r,
        )
        for state in STATES:
            self.models.labels(state).set(0)
        for reason in ("max_connections", "head_timeout"):
            self.connections_closed.labels(reason)

    def set_states(self, counts: dict[str, int]) -> None:
        for state in STATES:
            self.models.labels(state).set(counts.get(state, 0))

    def set_devices(self, samples: list[DeviceSample]) -> None:
        for s in samples:
            gpu = str(s.index)
            self.gpu_memory_used.labels(gpu).set(s.vram_used_mb * MIB)
            self.gpu_memory_total.labels(gpu).set(s.vram_total_mb * MIB)
            if s.utilization_pct is not None:
                self.gpu_utilization.labels(gpu).set(s.utilization_pct / 100)
            if s.temp_c is not None:
                self.gpu_temperature.labels(gpu).set(s.temp_c)
