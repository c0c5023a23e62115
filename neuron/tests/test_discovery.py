"""GPU discovery through NVML or nvidia-smi, and a host without GPUs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from neuron_testing import running, settings_for
from prometheus_client.parser import text_string_to_metric_families

from neuron.discovery import GpuProbe, parse_smi_csv

SMI = """\
0, NVIDIA H100 80GB HBM3, 81559, 1024, 80535, 12, 41, 9.0, 550.54.15
1, NVIDIA H100 80GB HBM3, 81559, [N/A], 81559, [N/A], 39, 9.0, 550.54.15
"""
SMI_BANNER = "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |"


def smi(args: list[str]) -> str:
    return SMI if args else SMI_BANNER


def test_nvidia_smi_csv_is_parsed() -> None:
    probe = GpuProbe(use_nvml=False, run=smi)
    assert probe.source == "nvidia-smi"
    host = probe.host()
    assert host.driver_version == "550.54.15"
    assert host.cuda_version == "12.4"
    assert [(d.index, d.name, d.vram_total_mb, d.compute_capability) for d in host.devices] == [
        (0, "NVIDIA H100 80GB HBM3", 81559, "9.0"),
        (1, "NVIDIA H100 80GB HBM3", 81559, "9.0"),
    ]
    first, second = probe.sample()
    assert first.public() == {
        "index": 0,
        "vram_used_mb": 1024,
        "vram_free_mb": 80535,
        "utilization_pct": 12.0,
        "temp_c": 41.0,
    }
    assert second.vram_used_mb == 0
    assert second.utilization_pct is None


def test_garbage_and_empty_output_mean_no_gpus() -> None:
    assert parse_smi_csv("") == []
    assert parse_smi_csv("No devices were found\n") == []
    probe = GpuProbe(use_nvml=False, run=lambda args: "")
    assert probe.host().devices == []
    assert probe.host().cuda_version is None
    assert probe.sample() == []


class FakeNvml:
    """The slice of pynvml the probe uses, for one 24 GiB GPU."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = RuntimeError

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA L4"

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return (8, 9)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        mib = 1024 * 1024
        return SimpleNamespace(total=24576 * mib, used=4096 * mib, free=20480 * mib)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=55)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        raise RuntimeError("not supported")


def test_nvml_is_preferred() -> None:
    probe = GpuProbe(nvml=FakeNvml())
    assert probe.source == "nvml"
    host = probe.host()
    assert (host.cuda_version, host.driver_version) == ("12.4", "550.54.15")
    assert host.devices[0].compute_capability == "8.9"
    (sample,) = probe.sample()
    assert (sample.vram_used_mb, sample.vram_free_mb, sample.utilization_pct) == (4096, 20480, 55)
    assert sample.temp_c is None


async def test_health_discovery_and_metrics_show_the_gpus() -> None:
    async with running(settings_for(), probe=GpuProbe(use_nvml=False, run=smi)) as neuron:
        health = (await neuron.client.get("/health")).json()
        assert health["status"] in {"activating", "ready"}
        assert [d["index"] for d in health["devices"]] == [0, 1]
        assert health["devices"][0]["vram_free_mb"] == 80535
        discovery = (await neuron.client.get("/discovery")).json()
        assert discovery["cuda_version"] == "12.4"
        assert discovery["harnesses"] == ["vllm"]
        assert discovery["neuron_version"]
        assert "engine_version" in discovery
        assert discovery["devices"][1]["vram_total_mb"] == 81559
        metrics = (await neuron.client.get("/metrics")).text
        samples = {
            (s.name, s.labels.get("gpu")): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert samples["neuron_gpu_memory_total_bytes", "0"] == 81559 * 1024 * 1024
        assert samples["neuron_gpu_memory_used_bytes", "0"] == 1024 * 1024 * 1024
        assert samples["neuron_gpu_utilization_ratio", "0"] == 0.12
        assert samples["neuron_gpu_temperature_celsius", "1"] == 39.0


async def test_without_gpus_everything_still_works(neuron) -> None:  # type: ignore[no-untyped-def]
    discovery = (await neuron.client.get("/discovery")).json()
    assert discovery["devices"] == []
    assert discovery["hostname"]
    assert discovery["kernel"]
    assert (await neuron.client.get("/health")).json()["devices"] == []
    assert (await neuron.load("m")).status_code == 200
