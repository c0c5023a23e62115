"""The device health cache: sampled in the background, read by ``/health`` for free."""

from __future__ import annotations

import asyncio
import logging

from neuron.discovery import DeviceSample, GpuProbe, Host
from neuron.metrics import NeuronMetrics

log = logging.getLogger("neuron.health")


class HealthMonitor:
    """Samples the GPUs every ``interval`` seconds (in a thread: NVML calls block)."""

    def __init__(self, probe: GpuProbe, metrics: NeuronMetrics, interval: float) -> None:
        self.probe = probe
        self.interval = interval
        self.samples: list[DeviceSample] = []
        self.host: Host | None = None
        self._metrics = metrics

    async def sample(self) -> list[DeviceSample]:
        """A fresh sample (also refreshes the cache); used before placing a model."""
        try:
            self.samples = await asyncio.to_thread(self.probe.sample)
        except Exception:  # a flaky driver must not take the neuron down
            log.warning("GPU sampling failed", exc_info=True)
        self._metrics.set_devices(self.samples)
        return self.samples

    async def describe_host(self) -> Host:
        try:
            self.host = await asyncio.to_thread(self.probe.host)
        except Exception:  # report what we can rather than nothing
            log.warning("GPU discovery failed", exc_info=True)
            self.host = await asyncio.to_thread(GpuProbe(use_nvml=False, run=lambda _: "").host)
        return self.host

    async def run(self) -> None:
        host = await self.describe_host()
        log.info(
            "host %s: %d GPU(s) via %s, driver %s, CUDA %s",
            host.hostname,
            len(host.devices),
            self.probe.source,
            host.driver_version,
            host.cuda_version,
        )
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)
