"""What this host has: GPUs (NVML, else ``nvidia-smi``), driver, CUDA, OS.

NVML and ``nvidia-smi`` read the driver's bookkeeping; neither creates a CUDA context,
so the supervisor never holds VRAM itself. Every function here blocks: call them from
a worker thread. No GPU, no driver, no ``nvidia-smi`` → empty device lists, never an error.
"""

from __future__ import annotations

import logging
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("neuron.discovery")

MIB = 1024 * 1024
SMI_FIELDS = (
    "index,name,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,"
    "compute_cap,driver_version"
)


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    vram_total_mb: int
    compute_capability: str | None


@dataclass(frozen=True)
class DeviceSample:
    index: int
    vram_used_mb: int
    vram_free_mb: int
    vram_total_mb: int
    utilization_pct: float | None
    temp_c: float | None

    def public(self) -> dict[str, Any]:
        """The ``/health`` device shape."""
        return {
            "index": self.index,
            "vram_used_mb": self.vram_used_mb,
            "vram_free_mb": self.vram_free_mb,
            "utilization_pct": self.utilization_pct,
            "temp_c": self.temp_c,
        }


@dataclass(frozen=True)
class Host:
    hostname: str
    os: str
    kernel: str
    cuda_version: str | None
    driver_version: str | None
    devices: list[Device] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class GpuProbe:
    """Reads GPUs through NVML when it loads, else through ``nvidia-smi``.

    ``run`` (the ``nvidia-smi`` runner) is injectable so the CSV path is testable anywhere.
    """

    def __init__(
        self,
        *,
        use_nvml: bool = True,
        nvml: Any = None,
        run: Callable[[list[str]], str] | None = None,
    ) -> None:
        """``nvml`` stands in for the ``pynvml`` module (tests); ``run`` for ``nvidia-smi``."""
        self._nvml: Any = nvml or (_load_nvml() if use_nvml else None)
        self._run = run or _run_smi

    @property
    def source(self) -> str:
        return "nvml" if self._nvml is not None else "nvidia-smi"

    def host(self) -> Host:
        cuda = driver = None
        devices: list[Device] = []
        if self._nvml is not None:
            nv = self._nvml
            driver = _text(nv.nvmlSystemGetDriverVersion())
            version = nv.nvmlSystemGetCudaDriverVersion_v2()
            cuda = f"{version // 1000}.{version % 1000 // 10}"
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
                devices.append(
                    Device(
                        index=i,
                        name=_text(nv.nvmlDeviceGetName(handle)),
                        vram_total_mb=int(nv.nvmlDeviceGetMemoryInfo(handle).total // MIB),
                        compute_capability=f"{major}.{minor}",
                    )
                )
        else:
            for row in self._smi_rows():
                driver = row[8] or driver
                devices.append(
                    Device(
                        index=int(row[0]),
                        name=row[1],
                        vram_total_mb=_int(row[2]) or 0,
                        compute_capability=row[7] or None,
                    )
                )
            cuda = self._smi_cuda_version() if devices else None
        uname = platform.uname()
        return Host(
            hostname=socket.gethostname(),
            os=_os_name(),
            kernel=uname.release,
            cuda_version=cuda,
            driver_version=driver,
            devices=devices,
        )

    def sample(self) -> list[DeviceSample]:
        if self._nvml is not None:
            return self._nvml_sample()
        return [
            DeviceSample(
                index=int(row[0]),
                vram_total_mb=_int(row[2]) or 0,
                vram_used_mb=_int(row[3]) or 0,
                vram_free_mb=_int(row[4]) or 0,
                utilization_pct=_float(row[5]),
                temp_c=_float(row[6]),
            )
            for row in self._smi_rows()
        ]

    def _nvml_sample(self) -> list[DeviceSample]:
        nv = self._nvml
        samples = []
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            try:
                util: float | None = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nv.NVMLError:
                util = None
            try:
                temp: float | None = float(
                    nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
                )
            except nv.NVMLError:
                temp = None
            samples.append(
                DeviceSample(
                    index=i,
                    vram_used_mb=int(mem.used // MIB),
                    vram_free_mb=int(mem.free // MIB),
                    vram_total_mb=int(mem.total // MIB),
                    utilization_pct=util,
                    temp_c=temp,
                )
            )
        return samples

    def _smi_rows(self) -> list[list[str]]:
        out = self._run(["--query-gpu=" + SMI_FIELDS, "--format=csv,noheader,nounits"])
        return parse_smi_csv(out)

    def _smi_cuda_version(self) -> str | None:
        for line in self._run([]).splitlines():
            if "CUDA Version:" in line:
                return line.split("CUDA Version:")[1].split()[0]
        return None


def parse_smi_csv(text: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --format=csv,noheader,nounits``; ``[N/A]`` becomes ``""``."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < len(SMI_FIELDS.split(",")) or not cells[0].isdigit():
            continue
        rows.append(["" if c.startswith("[") or c == "N/A" else c for c in cells])
    return rows


def _run_smi(args: list[str]) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [exe, *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return ""
    return done.stdout if done.returncode == 0 else ""


def _load_nvml() -> Any:
    try:
        import pynvml  # optional at run time

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: fall back to nvidia-smi
        return None
    return pynvml


def _os_name() -> str:
    try:
        info = platform.freedesktop_os_release()
        return info.get("PRETTY_NAME") or info.get("NAME", platform.system())
    except OSError:
        return f"{platform.system()} {platform.release()}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: str) -> int | None:
    try:
        return int(float(value))
    except ValueError:
        return None


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
