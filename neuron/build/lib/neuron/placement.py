"""Which GPUs a model goes on, and whether it fits: plain values in, plain values out."""

from __future__ import annotations

from neuron.discovery import DeviceSample
from neuron.errors import DoesNotFit
from neuron.settings import ModelSpec


def choose_devices(
    spec: ModelSpec, samples: list[DeviceSample], default_utilization: float
) -> list[int] | None:
    """The device indices for ``spec`` (``None`` on a host without GPUs).

    vLLM claims ``gpu_memory_utilization`` of each device's *total* memory and refuses to
    start when less than that is free, so that is the need per device; a catalogue
    ``vram_mb`` split over the devices raises it further. Without explicit ``devices`` the
    ``tensor_parallel`` devices with the most free memory are taken.

    Raises :class:`DoesNotFit` (409) before anything is started.
    """
    if not samples:
        return None
    by_index = {s.index: s for s in samples}
    if spec.devices is not None:
        unknown = [d for d in spec.devices if d not in by_index]
        if unknown:
            raise DoesNotFit(
                f"devices {unknown} do not exist on this host (it has {sorted(by_index)})"
            )
        chosen = [by_index[d] for d in spec.devices]
    else:
        if spec.tensor_parallel > len(samples):
            raise DoesNotFit(
                f"{spec.model_id} needs {spec.tensor_parallel} GPUs; this host has {len(samples)}"
            )
        chosen = sorted(samples, key=lambda s: s.vram_free_mb, reverse=True)
        chosen = sorted(chosen[: spec.tensor_parallel], key=lambda s: s.index)
    utilization = spec.gpu_memory_utilization or default_utilization
    per_device_mb = (spec.vram_mb or 0) / len(chosen)
    short = []
    for sample in chosen:
        need = max(per_device_mb, utilization * sample.vram_total_mb)
        if sample.vram_free_mb < need:
            short.append(f"GPU {sample.index}: needs {need:.0f} MiB, {sample.vram_free_mb} free")
    if short:
        raise DoesNotFit(f"{spec.model_id} does not fit: " + "; ".join(short))
    return [s.index for s in chosen]
