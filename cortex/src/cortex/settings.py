"""cortex's configuration: ``cortex.toml`` + ``CORTEX_`` environment, and the model catalogue.

Precedence, highest first: ``CORTEX_*`` environment variables (nested keys joined with
``__``, e.g. ``CORTEX_GATEWAY__LISTEN=127.0.0.1:8080``), the TOML file, the defaults.
Unknown keys and wrong types are errors: :func:`load_settings` raises :class:`ConfigError`
naming the file and the key. A missing ``models.toml`` is an empty catalogue; a broken one
is an error.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MODELS_CONFIG = Path("/etc/cortex/models.toml")


class ConfigError(Exception):
    """The configuration cannot be used; the message is meant for the operator as is."""


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


class Gateway(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    max_body_bytes: Annotated[int, Field(gt=0)] = 32 * 1024 * 1024
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    idle_timeout: Annotated[float, Field(gt=0)] = 300.0
    """Longest silence between two chunks from a neuron; never a deadline on a whole answer."""
    upstream_idle_timeout: Annotated[float, Field(gt=0)] = 60.0
    """Seconds an idle kept-alive connection to a neuron stays open before cortex closes it."""
    resolve_every: Annotated[float, Field(ge=0)] = 30.0
    """Seconds a neuron's host name stays looked up for new connections (0: every time)."""
    drain_timeout: Annotated[float, Field(ge=0)] = 60.0
    """Seconds answers under way get to finish on shutdown; streams still running then end
    with an in-band error event."""
    retry_after: Annotated[int, Field(ge=1)] = 5
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    """A request line and all its headers; over it: 431 and the connection closes."""
    max_header_field_bytes: Annotated[int, Field(ge=256)] = 16 * 1024
    """One header name or value, or the URL; over it: 431 and the connection closes."""
    max_connections: Annotated[int, Field(ge=1)] = 8192
    """Client connections open at once on the API port; over it: 503 and Retry-After."""
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a connection has to send a whole request head (then 408, or a quiet close)."""
    keep_alive_timeout: Annotated[float, Field(gt=0)] = 75.0
    """Seconds an idle client connection stays open between requests."""
    send_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds a client may take none of its answer (its socket full) before it is cut off."""
    body_timeout: Annotated[float, Field(gt=0)] = 60.0
    """Seconds a request body may take to arrive once its head has (then 408 and a close)."""
    max_body_memory: Annotated[int, Field(gt=0)] = 1024 * 1024 * 1024
    """Bytes of request bodies all requests in progress may hold; past it: 503, Retry-After."""
    # What one neuron answer may cost; past any: 502 (an in-band error once streaming) and
    # that upstream connection closes.
    upstream_max_head_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    upstream_max_headers: Annotated[int, Field(ge=8)] = 100
    upstream_head_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds from an answer head's first byte to its end."""
    upstream_max_answer_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    """A whole (not streamed) answer's body."""
    upstream_answer_timeout: Annotated[float, Field(gt=0)] = 60.0
    """Seconds from a whole answer's head to the end of its body."""
    upstream_max_event_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    """One server-sent event of a stream."""
    upstream_event_timeout: Annotated[float, Field(gt=0)] = 60.0
    """Seconds from an event's first byte to its end."""

    _check_listen = field_validator("listen", "metrics_listen")(_listen)


class Poll(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval: Annotated[float, Field(gt=0)] = 2.0
    timeout: Annotated[float, Field(gt=0)] = 5.0
    down_after: Annotated[int, Field(ge=1)] = 3
    """Consecutive failed polls before a neuron is marked down (one success brings it back)."""
    max_answer_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    """A ``/models``, ``/health`` or ``/discovery`` answer (over it the poll fails), or a
    neuron's answer to a load or unload."""
    watch: bool = True
    """Also long-poll each neuron's ``/models/watch``: its changes arrive in milliseconds."""
    watch_timeout: Annotated[float, Field(gt=0, le=300)] = 25.0
    """Longest one watch is held open (the neuron caps it at 30 s)."""


class Loading(BaseModel):
    """``[loading]``: models loaded on demand, evictions, pins and idle unload."""

    model_config = ConfigDict(extra="forbid")

    on_demand: bool = True
    """Load a catalogued model that is ready nowhere when a request asks for it."""
    cold_start_timeout: Annotated[float, Field(gt=0)] = 600.0
    """Longest a request waits for its model to load before 503 (the load goes on)."""
    load_timeout: Annotated[float, Field(gt=0)] = 1800.0
    """Longest cortex waits for a neuron's ``/models/load`` to answer."""
    keepalive_interval: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between SSE comments sent to a stream waiting for its model."""
    idle_ttl: Annotated[float, Field(ge=0)] = 0.0
    """Put a catalogued model unused this long to sleep (seconds; 0: never); where it cannot
    sleep (sleep off, or the neuron's host RAM budget full), unload it. Per model: idle_ttl."""
    sleep_ttl: Annotated[float, Field(ge=0)] = 0.0
    """Unload a catalogued model asleep this long (seconds; 0: never)."""
    min_residency: Annotated[float, Field(ge=0)] = 0.0
    """Seconds after a wake during which a model is not demoted to make room (0: off)."""
    cold_estimate: Annotated[float, Field(gt=0)] = 60.0
    """Expected seconds for a cold load until one is measured (per model and neuron)."""
    wake_estimate: Annotated[float, Field(gt=0)] = 5.0
    """Expected seconds for a wake until one is measured (per model and neuron)."""
    check_interval: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between checks for idle models and missing pins."""
    pin_retry: Annotated[float, Field(gt=0)] = 60.0
    """Seconds before a pinned model whose load failed is tried again."""


class Routing(BaseModel):
    """``[routing]``: which neuron gets a request for a model that several neurons serve."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["prefix", "load"] = "load"
    """``prefix``: the engine most likely to hold the prompt's prefix, within the guard;
    ``load``: the least loaded engine."""
    guard_margin: Annotated[float, Field(ge=0)] = 2.0
    """Requests (running + waiting) the prefix's engine may have beyond the least loaded one,
    when it holds all of the prompt and the least loaded none (scaled by the share it holds
    beyond the least loaded one's)."""
    guard_ratio: Annotated[float, Field(ge=0)] = 0.5
    """Plus this fraction of the least loaded engine's requests (scaled the same way)."""
    chunk_chars: Annotated[int, Field(ge=16, le=65536)] = 1024
    """Characters per hashed piece of a long message (messages are pieces of their own)."""
    max_prompt_chars: Annotated[int, Field(ge=16)] = 65536
    """Characters of a prompt hashed at most, per request."""
    index_entries_per_model: Annotated[int, Field(ge=1)] = 65536
    """Prefix pieces remembered per model (least recently used evicted first)."""
    index_entries: Annotated[int, Field(ge=1)] = 262144
    """Prefix pieces remembered for all models together."""


class NeuronEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    endpoint: Annotated[str, Field(pattern=r"^https?://[^/]+")]
    token: str | None = None

    @property
    def base(self) -> str:
        return self.endpoint.rstrip("/")


class ApiKey(BaseModel):
    """One ``[[auth.keys]]`` entry: a named key with a role, its secret given exactly one way.

    ``key_file`` and ``key_env`` keep the secret out of ``cortex.toml``: the file's content
    (surrounding whitespace stripped) or the named ``CORTEX_`` variable is read once, when the
    settings are loaded.
    """

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ]
    """What metrics (label ``key``) and logs call this key; never the secret."""
    key: Annotated[str, Field(min_length=1)] | None = None
    key_file: Path | None = None
    key_env: Annotated[str, Field(pattern=r"^CORTEX_[A-Za-z0-9_]+$")] | None = None
    role: Literal["user", "admin"] = "user"
    """``user``: inference and ``/v1/models``. ``admin``: also ``/admin/*`` and ``/fleet``."""
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    """The models this key may use (unset: all); others get 403."""

    @model_validator(mode="after")
    def _secret(self) -> Self:
        given = [f for f in ("key", "key_file", "key_env") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of key, key_file, key_env (got {given or 'none'})")
        if self.key_file is not None:
            try:
                self.key = self.key_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"key_file {str(self.key_file)!r} cannot be read: {exc}") from None
            if not self.key:
                raise ValueError(f"key_file {str(self.key_file)!r} is empty")
        if self.key_env is not None:
            self.key = os.environ.get(self.key_env, "").strip()
            if not self.key:
                raise ValueError(f"key_env: ${self.key_env} is not set (or empty)")
        return self


class Auth(BaseModel):
    """``[auth]``: no keys at all means no authentication (every caller is an admin)."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Plain keys with the ``user`` role, named ``api_keys[0]``, ``api_keys[1]``, ..."""
    keys: list[ApiKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        names = [k.name for k in self.keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"keys: names must be unique; repeated: {dupes}")
        secrets = [k.key for k in self.keys] + list(self.api_keys)
        if len(set(secrets)) != len(secrets):
            raise ValueError("the same key is given twice (in keys or api_keys)")
        return self


class CortexSettings(BaseSettings):
    """Everything ``cortex serve`` reads at start; see ``cortex/cortex.example.toml``."""

    model_config = SettingsConfigDict(
        env_prefix="CORTEX_", env_nested_delimiter="__", extra="forbid"
    )

    gateway: Gateway = Field(default_factory=Gateway)
    poll: Poll = Field(default_factory=Poll)
    loading: Loading = Field(default_factory=Loading)
    routing: Routing = Field(default_factory=Routing)
    neurons: list[NeuronEntry] = Field(default_factory=list)
    models_config: Path = DEFAULT_MODELS_CONFIG
    auth: Auth = Field(default_factory=Auth)
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    instance: Annotated[
        str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    ] = Field(default_factory=lambda: socket.gethostname()[:64] or "cortex")
    """This replica's name in metrics (``cortex_replica_info``), logs and the neurons' logs."""

    @field_validator("neurons")
    @classmethod
    def _unique_names(cls, neurons: list[NeuronEntry]) -> list[NeuronEntry]:
        names = [n.name for n in neurons]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"neuron names must be unique; repeated: {dupes}")
        return neurons

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


class CatalogueModel(BaseModel):
    """One ``[[models]]`` entry of ``models.toml``: a neuron ModelSpec plus placement facts."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1)]
    harness: str = "vllm"
    source: str | None = None
    quant: str | None = None
    dtype: str | None = None
    max_model_len: Annotated[int, Field(gt=0)] | None = None
    tensor_parallel: Annotated[int, Field(ge=1)] = 1
    vram_mb: Annotated[int, Field(ge=0)] | None = None
    min_devices: Annotated[int, Field(ge=0)] = 0
    min_device_vram_mb: Annotated[int, Field(ge=0)] = 0
    pinned_on: list[str] = Field(default_factory=list)
    priority: int = 0
    """Evicted after models of lower priority (ties: least recently used first)."""
    idle_ttl: Annotated[float, Field(ge=0)] | None = None
    """Seconds unused before it is put to sleep, or unloaded where it cannot sleep (0: never;
    unset: ``[loading] idle_ttl``)."""
    engine_args: list[str] = Field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        """The neuron ``ModelSpec`` to load this model with."""
        spec: dict[str, Any] = {
            "model_id": self.id,
            "harness": self.harness,
            "tensor_parallel": self.tensor_parallel,
            "engine_args": self.engine_args,
        }
        optional = {
            "source": self.source,
            "quant": self.quant,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "vram_mb": self.vram_mb,
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        return spec


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[CatalogueModel] = Field(default_factory=list)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def load_settings(path: Path | None) -> CortexSettings:
    """Read ``path`` (``None``: defaults and environment only). Raises :class:`ConfigError`."""
    data = _read_toml(path) if path is not None else {}
    try:
        return CortexSettings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'environment'}: {describe(exc)}") from None


def load_catalogue(path: Path, settings: CortexSettings | None = None) -> Catalogue:
    """The catalogue at ``path``; a missing file is an empty catalogue.

    With ``settings``, every ``pinned_on`` name must be a configured neuron.
    """
    if not path.exists():
        return Catalogue()
    try:
        catalogue = Catalogue(**_read_toml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from None
    ids = [m.id for m in catalogue.models]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{path}: models: ids must be unique; repeated: {dupes}")
    if settings is not None:
        names = {n.name for n in settings.neurons}
        for i, model in enumerate(catalogue.models):
            unknown = [p for p in model.pinned_on if p not in names]
            if unknown:
                raise ConfigError(
                    f"{path}: models.{i}.pinned_on: {unknown} are not configured neurons "
                    f"(configured: {sorted(names)})"
                )
    return catalogue


def describe(exc: ValidationError) -> str:
    """One clause per problem: ``key.path: message``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)
