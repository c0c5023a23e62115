"""The neuron's configuration: ``neuron.toml`` plus ``NEURON_`` environment overrides.

Precedence, highest first: ``NEURON_*`` environment variables (nested keys joined
with ``__``, e.g. ``NEURON_HARNESS__VLLM__STARTUP_TIMEOUT=900``), then the TOML file,
then the defaults below. Only the upper-case prefix counts: a variable such as
``neuron_port`` or ``Neuron_Auth_Token`` is refused at start (:func:`load_settings`), so what
the neuron reads and what it keeps from engines (any case) cannot drift apart.
Unknown keys and wrong types are errors: :func:`load_settings`
raises :class:`ConfigError` with one message naming the file and the key.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_PORT = 13131
ENV_PREFIX = "NEURON_"
"""The neuron's own environment variables, in upper case only (see :class:`Environment`)."""
MODELS_DIR = "/var/lib/neuron/models"
ENV_PASSTHROUGH = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_*",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "CUDA_*",
    "NVIDIA_*",
    "NCCL_*",
    "HF_*",
    "VLLM_*",
    "TRANSFORMERS_*",
    "TOKENIZERS_*",
    "TORCH_*",
    "TRITON_*",
    "OMP_*",
    "MKL_*",
    "KMP_*",
    "XDG_CACHE_HOME",
]


MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
"""A served model name: what hub ids use (``Qwen/Qwen3-8B``, ``org/m-v2.5``) plus ``:`` tags."""
WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
"""A ``quant`` or ``dtype`` name (``fp8``, ``awq_marlin``, ``compressed-tensors``, ``bfloat16``)."""


class ConfigError(Exception):
    """The configuration cannot be used; the message is meant for the operator as is."""


class ModelSpec(BaseModel):
    """What to load: the body of ``POST /models/load`` and each ``[[default_models]]`` entry."""

    # pydantic before 2.10 reserved every "model_" name and warned about model_id.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: Annotated[str, Field(min_length=1, max_length=256)]
    source: str | None = None
    harness: str = "vllm"
    quant: str | None = None
    dtype: str | None = None
    max_model_len: Annotated[int, Field(gt=0)] | None = None
    tensor_parallel: Annotated[int, Field(ge=1)] = 1
    devices: list[Annotated[int, Field(ge=0)]] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    vram_mb: Annotated[int, Field(ge=0)] | None = None
    engine_args: list[str] = Field(default_factory=list)

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, value: str) -> str:
        # It goes into the engine's argv after --served-model-name and into every log line of
        # that engine: vLLM's parser takes an item that starts with "-" for a flag (and one
        # with a "." for a key of a JSON option, swallowing the next item, --host included).
        if not MODEL_ID.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a model id: letters, digits and . _ - : / only, "
                "starting with a letter or digit"
            )
        return value

    @field_validator("quant", "dtype")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 64 or not WORD.fullmatch(value)):
            raise ValueError(
                f"{value!r} is not a name vLLM knows: letters, digits, _ and - only "
                "(at most 64), starting with a letter or digit"
            )
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None:
            _argv_item(value, "source")
            if value.startswith("-"):
                raise ValueError(f"{value!r} starts with '-', which vLLM would read as a flag")
        return value

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, items: list[str]) -> list[str]:
        for item in items:
            _argv_item(item, "engine_args item")
        return items

    @property
    def resolved_source(self) -> str:
        return self.source or self.model_id


def _argv_item(value: str, what: str) -> None:
    """No control characters (a newline would split the engine's log lines), not empty."""
    if not value or not value.isprintable():
        raise ValueError(
            f"{what} {value!r} is empty or has a control character (newline, tab, ...)"
        )


class VllmHarness(BaseModel):
    """``[harness.vllm]``: how engines are started."""

    model_config = ConfigDict(extra="forbid")

    python: str = Field(default_factory=lambda: sys.executable)
    """Interpreter that has vLLM installed (the engine venv)."""
    module: str = "vllm.entrypoints.openai.api_server"
    command: list[str] | None = None
    """Full command prefix replacing ``[python, "-m", module]`` (tests use a stand-in engine)."""
    hf_cache: str | None = None
    startup_timeout: Annotated[float, Field(gt=0)] = 900.0
    stop_timeout: Annotated[float, Field(gt=0)] = 30.0
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    allowed_engine_args: list[str] = Field(
        default_factory=lambda: [
            "--enforce-eager",
            "--enable-prefix-caching",
            "--max-num-seqs",
            "--max-num-batched-tokens",
            "--kv-cache-dtype",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "--reasoning-parser",
            "--chat-template",
            "--generation-config",
            "--seed",
        ]
    )
    """Engine flags a load request from the network may pass (``--flag`` or ``--flag=value``).
    ``--trust-remote-code`` is not here on purpose: add it only if you trust every caller."""
    allowed_paths: list[str] | None = None
    """Where a load request's ``source`` and file-naming engine args may point (symlinks
    followed). Unset: the Hugging Face cache (see :attr:`cache`) and ``/var/lib/neuron/models``."""
    allowed_sources: list[str] = Field(default_factory=lambda: ["*"])
    """Hub repo ids a load request may name (shell patterns, e.g. ``"Qwen/*"``)."""
    env_passthrough: list[str] = Field(default_factory=lambda: list(ENV_PASSTHROUGH))
    """Names of the neuron's environment variables an engine inherits (``X_*``: a prefix).
    ``NEURON_*`` never passes, whatever this says."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for every engine (e.g. ``VLLM_CPU_KVCACHE_SPACE``)."""
    log_tail_lines: Annotated[int, Field(ge=1, le=1000)] = 40
    engine_ports: tuple[int, int] | None = None
    """The loopback ports engines listen on, both ends included (``[20000, 20999]``). Unset:
    from 20000 up to the kernel's ephemeral range (32767 on a default Linux), which avoids
    ports the kernel hands to outgoing connections. A port in use is skipped; a load that
    finds none free fails (502)."""

    @field_validator("engine_ports")
    @classmethod
    def _port_range(cls, ports: tuple[int, int] | None) -> tuple[int, int] | None:
        if ports is not None and not 1024 <= ports[0] <= ports[1] <= 65535:
            raise ValueError("must be [low, high] with 1024 <= low <= high <= 65535")
        return ports

    @field_validator("allowed_engine_args")
    @classmethod
    def _checkable(cls, flags: list[str]) -> list[str]:
        # Imported here: neuron.engine imports this module.
        from neuron.engine.policy import check_flag_names, normal

        problems = check_flag_names(flags)
        if problems:
            raise ValueError("; ".join(problems))
        return [normal(flag) for flag in flags]

    @field_validator("hf_cache")
    @classmethod
    def _cache_path(cls, value: str | None) -> str | None:
        if value is not None:
            _argv_item(value, "hf_cache")
            if not os.path.isabs(value):
                raise ValueError(f"{value!r} is not an absolute path")
        return value

    @field_validator("env")
    @classmethod
    def _no_neuron_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        if any(is_neuron_variable(name) for name in env):
            raise ValueError("NEURON_* variables are the neuron's own and never go to engines")
        return env

    @property
    def argv_prefix(self) -> list[str]:
        return list(self.command) if self.command else [self.python, "-m", self.module]

    @property
    def cache(self) -> str:
        """The Hugging Face cache engines use: ``hf_cache``, else ``$HF_HOME``, else ~/.cache."""
        return (
            self.hf_cache
            or os.environ.get("HF_HOME")
            or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        )

    @property
    def paths(self) -> list[str]:
        """``allowed_paths``, or its default."""
        if self.allowed_paths is not None:
            return list(self.allowed_paths)
        return [self.cache, MODELS_DIR]


class Harnesses(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vllm: VllmHarness = Field(default_factory=VllmHarness)


def _half_of_memtotal_mb() -> int:
    """Half this host's RAM (``MemTotal``), in MiB; 8 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 8192


class SleepSettings(BaseModel):
    """``[sleep]``: the residency ladder's neuron side (vLLM sleep mode)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Engines run with ``VLLM_SERVER_DEV_MODE=1`` (and ``--enable-sleep-mode`` on GPUs), and a
    model evicted to make room sleeps instead of stopping while the budgets below allow."""
    level: Literal[1, 2] = 1
    """The sleep level used unless a sleep command names one. Level 2 always runs the canary."""
    canary: bool = False
    """Run the canary after a level-1 wake too (level 2 always does)."""
    canary_prompt: Annotated[str, Field(min_length=1)] = "The capital of France is"
    max_sleeping_models: Annotated[int, Field(ge=0)] | None = None
    """Most sleeping models at once (unset: only the host RAM budget limits them)."""
    host_ram_budget_mb: Annotated[int, Field(ge=0)] = Field(default_factory=_half_of_memtotal_mb)
    """Host RAM sleepers may hold (MiB); default half of ``MemTotal``. Every model that has
    slept since its engine started counts (vLLM keeps its pinned memory after a wake)."""
    host_ram_per_model_mb: Annotated[int, Field(ge=0)] = 4096
    """A sleeper's host RAM when neither its ``vram_mb`` nor a GPU reservation says (CPU hosts)."""
    sleeper_vram_mb: Annotated[int, Field(ge=0)] = 1536
    """The GPU memory a sleeper keeps (CUDA context, graph pools), used where NVML cannot
    measure what its sleep freed."""
    min_residency: Annotated[float, Field(ge=0)] = 0.0
    """Seconds after a wake during which this neuron does not put the model back to sleep to
    wake another for a request that reached it (0: off). Set it to cortex's ``[loading]
    min_residency``. Default models are never demoted that way."""
    timeout: Annotated[float, Field(gt=0)] = 120.0
    """Longest one ``/sleep``, ``/wake_up`` or canary call to an engine may take (seconds)."""


class NeuronSettings(BaseSettings):
    """Everything the neuron reads at start; see ``neuron/neuron.example.toml``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    host: str = "0.0.0.0"  # noqa: S104 - a worker is reached from the private network
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT
    auth_token: str | None = None
    drain_timeout: Annotated[float, Field(ge=0)] = 60.0
    health_interval: Annotated[float, Field(gt=0)] = 5.0
    engine_metrics_timeout: Annotated[float, Field(gt=0)] = 2.0
    """Longest one engine's ``/metrics`` is waited for (engines are read concurrently, for
    the neuron's ``/metrics`` and every ``health_interval`` for ``/models``); an engine that
    does not answer in time contributes nothing."""
    engine_metrics_max_bytes: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024
    """Most of one engine's ``/metrics`` body the neuron reads (vLLM's is about 126 KB); an
    engine whose body is larger contributes nothing, which is logged once."""
    max_body_bytes: Annotated[int, Field(gt=0)] = 32 * 1024 * 1024
    max_connections: Annotated[int, Field(ge=1)] = 4096
    """Most connections open at once (cortex holds one per request in flight); one more is
    answered 503 with ``Retry-After`` and closed before anything is read from it."""
    head_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a new connection has to make a request that carries the token (any request,
    without ``auth_token``); a connection still sending its first head then, or one that
    only sent token-less ``/health`` requests, is closed. Trusted connections stay open
    between requests for 75 s (keep-alive)."""
    engine_read_timeout: Annotated[float, Field(gt=0)] = 600.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_loaded_models: Annotated[int, Field(ge=1)] | None = None
    """Most awake engines this host runs at once (loading, ready, waking or unloading;
    sleepers count against ``sleep.max_sleeping_models``); a load beyond it is 409.
    Unset: no limit beyond GPU memory. On CPU-only hosts this is the capacity."""
    harness: Harnesses = Field(default_factory=Harnesses)
    sleep: SleepSettings = Field(default_factory=SleepSettings)
    default_models: list[ModelSpec] = Field(default_factory=list)

    @field_validator("auth_token")
    @classmethod
    def _empty_token_is_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


def is_neuron_variable(name: str) -> bool:
    """``NEURON_*`` in any case: never handed to an engine (its token may be among them)."""
    return name.upper().startswith(ENV_PREFIX)


def misspelt_neuron_variables(environ: Mapping[str, str]) -> list[str]:
    """``NEURON_*`` names that are not in upper case (``neuron_auth_token``, ``Neuron_Port``).

    pydantic-settings matches names case-insensitively, so such a variable would be read as
    a setting (the token among them); :func:`load_settings` refuses to start with one
    rather than guess, through nothing but this public check.
    """
    return sorted(
        name for name in environ if is_neuron_variable(name) and not name.startswith(ENV_PREFIX)
    )


def load_settings(path: Path | None) -> NeuronSettings:
    """Read ``path`` (may be ``None`` for defaults only) and the environment.

    Raises :class:`ConfigError` naming the file and the offending key.
    """
    data: dict[str, Any] = {}
    where = str(path) if path else "environment"
    misspelt = misspelt_neuron_variables(os.environ)
    if misspelt:
        raise ConfigError(
            f"environment: {', '.join(misspelt)}: the prefix must be upper case "
            f"({ENV_PREFIX}...); rename or unset it"
        )
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return NeuronSettings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """One line per problem: ``key.path: message``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)
