"""Does a model fit, and on which GPUs: decided before any engine starts."""

from __future__ import annotations

import pytest
from neuron_testing import running, settings_for

from neuron.discovery import DeviceSample, GpuProbe
from neuron.errors import DoesNotFit
from neuron.placement import choose_devices
from neuron.settings import ModelSpec


def gpu(index: int, free: int, total: int = 80000) -> DeviceSample:
    return DeviceSample(index, total - free, free, total, None, None)


def test_no_gpus_means_no_devices_and_no_check() -> None:
    assert choose_devices(ModelSpec(model_id="m", vram_mb=10**9), [], 0.9) is None


def test_the_freest_devices_are_chosen() -> None:
    samples = [gpu(0, 10000), gpu(1, 79000), gpu(2, 78000)]
    assert choose_devices(ModelSpec(model_id="m", gpu_memory_utilization=0.5), samples, 0.9) == [1]
    spec = ModelSpec(model_id="m", tensor_parallel=2, gpu_memory_utilization=0.5)
    assert choose_devices(spec, samples, 0.9) == [1, 2]


def test_explicit_devices_are_respected() -> None:
    samples = [gpu(0, 80000), gpu(1, 80000)]
    assert choose_devices(ModelSpec(model_id="m", devices=[1]), samples, 0.9) == [1]
    with pytest.raises(DoesNotFit, match=r"devices \[7\] do not exist"):
        choose_devices(ModelSpec(model_id="m", devices=[7]), samples, 0.9)


def test_vllm_needs_its_memory_fraction_free() -> None:
    # vLLM claims gpu_memory_utilization of *total* memory and refuses to start without it.
    with pytest.raises(DoesNotFit, match=r"GPU 0: needs 72000 MiB, 40000 free"):
        choose_devices(ModelSpec(model_id="m"), [gpu(0, 40000)], 0.9)
    assert choose_devices(ModelSpec(model_id="m"), [gpu(0, 40000)], 0.45) == [0]


def test_catalogue_size_is_split_over_the_devices() -> None:
    spec = ModelSpec(model_id="m", tensor_parallel=2, vram_mb=100000, gpu_memory_utilization=0.1)
    assert choose_devices(spec, [gpu(0, 60000), gpu(1, 60000)], 0.9) == [0, 1]
    with pytest.raises(DoesNotFit, match="needs 50000 MiB"):
        choose_devices(spec, [gpu(0, 60000), gpu(1, 40000)], 0.9)


def test_too_few_gpus() -> None:
    with pytest.raises(DoesNotFit, match="needs 4 GPUs; this host has 1"):
        choose_devices(ModelSpec(model_id="m", tensor_parallel=4), [gpu(0, 80000)], 0.9)


SMI_ONE_BUSY_GPU = "0, NVIDIA A10, 24000, 20000, 4000, 0, 40, 8.6, 550.54.15\n"


async def test_a_model_that_does_not_fit_is_409_before_anything_starts() -> None:
    probe = GpuProbe(use_nvml=False, run=lambda args: SMI_ONE_BUSY_GPU if args else "")
    async with running(settings_for(), probe=probe) as neuron:
        response = await neuron.load("big")
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "does_not_fit"
        assert "GPU 0: needs 21600 MiB, 4000 free" in error["message"]
        assert await neuron.models() == {}
        small = await neuron.load("small", gpu_memory_utilization=0.1)
        assert small.status_code == 200
        assert small.json()["model"]["devices"] == [0]


async def test_max_loaded_models_refuses_one_more_with_409_and_keeps_serving() -> None:
    async with running(settings_for(max_loaded_models=1)) as neuron:
        health = (await neuron.client.get("/health")).json()
        assert (health["max_loaded_models"], health["loaded_models"]) == (1, 0)
        discovery = (await neuron.client.get("/discovery")).json()
        assert discovery["max_loaded_models"] == 1

        assert (await neuron.load("a")).status_code == 200
        refused = await neuron.load("b")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "does_not_fit"
        assert error["message"] == (
            "b does not fit: this neuron holds at most 1 model(s) and has 1 (a); unload one first"
        )
        assert set(await neuron.models()) == {"a"}
        assert (await neuron.load("a")).status_code == 200, "the one it holds is still fine"
        assert (await neuron.client.get("/health")).json()["loaded_models"] == 1

        unloaded = await neuron.client.post("/models/unload", json={"model_id": "a"})
        assert unloaded.status_code == 200
        assert (await neuron.load("b")).status_code == 200
        assert set(await neuron.models()) == {"b"}


async def test_a_failed_model_does_not_count_against_max_loaded_models() -> None:
    async with running(settings_for(max_loaded_models=1)) as neuron:
        failed = await neuron.load("broken", source="/nonexistent/model")
        assert failed.status_code == 502, failed.text
        assert (await neuron.models())["broken"]["status"] == "failed"
        assert (await neuron.load("a")).status_code == 200
