"""The gateways bench/sidebyside.py compares, and how each one is installed and started.

Each gateway runs alone on its CPU, with one worker, in front of one upstream, with retries
and extras off. cortex comes from the repository's ``.venv``; LiteLLM and vllm-router are
installed from PyPI into venvs of their own under the cache folder, on first use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import API_KEY, HOLD_MODEL, MODEL, free_port, pin

REPO = Path(__file__).resolve().parent.parent
LITELLM = "litellm[proxy]==1.108.7"
"""The newest release whose ``proxy`` extra installs from PyPI here: 1.108.8 to 1.109.x pin
``litellm-enterprise``/``litellm-proxy-extras`` post-releases that PyPI did not serve us, and
1.110 moved the proxy into a ``litellm-proxy`` package that was not there (2026-11)."""
VLLM_ROUTER = "vllm-router==0.1.17"
NAMES = ("direct", "cortex", "litellm", "vllm-router")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cortex-bench"


def ensure_venv(name: str, requirement: str, root: Path) -> Path:
    """``root/venvs/name`` with ``requirement`` installed (a stamp file makes reruns free)."""
    where = root / "venvs" / name
    stamp = where / ".bench-requirement"
    if stamp.exists() and stamp.read_text() == requirement:
        return where
    print(f"# installing {requirement} into {where} (first use; a minute or two)", flush=True)
    if not (where / "bin" / "python").exists():
        where.parent.mkdir(parents=True, exist_ok=True)
        # The base interpreter, not this venv's: the new venv must not see .venv's packages.
        venv.EnvBuilder(with_pip=True, clear=True).create(where)
    subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "install", "-q", requirement], check=True
    )
    stamp.write_text(requirement)
    return where


@dataclass
class Running:
    """A started gateway (or none, for direct)."""

    name: str
    base: str
    """Base URL; the chat endpoint is ``base + "/v1/chat/completions"``."""
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def chat(self) -> str:
        return self.base + "/v1/chat/completions"

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _spawn(
    name: str,
    argv: list[str],
    work: Path,
    cpu: int | None,
    env: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], Path]:
    log = work / f"{name}.log"
    environ = {k: v for k, v in os.environ.items() if k not in drop} | (env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=environ,
            preexec_fn=pin(cpu),
            start_new_session=True,  # its own process group: stop() reaches its children
        )
    return proc, log


def start_cortex(
    upstream: str,
    work: Path,
    cpu: int | None,
    neurons: int = 1,
    env: dict[str, str] | None = None,
) -> Running:
    """cortex with the fake upstream as its neuron; ``neurons`` > 1 lists it that many times.

    Each entry is a neuron of its own to cortex (polled, routed to, counted), all at the same
    address: a fleet of that size that serves the benchmark's models everywhere. ``env`` is
    added to cortex's environment.
    """
    api, metrics = free_port(), free_port()
    config = work / "cortex.toml"
    entries = "".join(
        f'[[neurons]]\nname = "fake{"" if i == 0 else f"-{i + 1}"}"\nendpoint = "{upstream}"\n'
        for i in range(neurons)
    )
    config.write_text(
        f'models_config = "{work / "models.toml"}"\nlog_level = "warning"\n'
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n' + entries
    )
    cortex = Path(sys.executable).with_name("cortex")
    if not cortex.exists():
        cortex = REPO / ".venv" / "bin" / "cortex"
    proc, log = _spawn("cortex", [str(cortex), "serve", "--config", str(config)], work, cpu, env)
    return Running("cortex", f"http://127.0.0.1:{api}", proc, log, {"config": str(config)})


def litellm_config(upstream: str) -> str:
    """LiteLLM's proxy config: one OpenAI-compatible deployment per model, nothing else.

    A master key (LiteLLM refuses to start without one; the benchmark's requests carry it,
    so the key check is a comparison with it) and no database: no virtual keys, no spend
    logs. No callbacks, no retries, no fallbacks; spend and error logs are off as well.
    """
    deployments = "".join(
        f"  - model_name: {model}\n"
        f"    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}/v1\n"
        f"      api_key: sk-bench\n"
        for model in (MODEL, HOLD_MODEL)
    )
    return (
        f"model_list:\n{deployments}"
        "litellm_settings:\n"
        "  num_retries: 0\n"
        "  request_timeout: 600\n"
        "  set_verbose: false\n"
        "  callbacks: []\n"
        "  success_callback: []\n"
        "  failure_callback: []\n"
        "router_settings:\n"
        "  num_retries: 0\n"
        "  allowed_fails: 1000000\n"
        "  routing_strategy: simple-shuffle\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
    )


def start_litellm(upstream: str, work: Path, cpu: int | None, root: Path) -> Running:
    where = ensure_venv("litellm", LITELLM, root)
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(litellm_config(upstream))
    env = {
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "LITELLM_MASTER_KEY": API_KEY,
        # LiteLLM opens at most 500 connections per upstream host (1,000 in all) and queues
        # the rest; lift the cap so that the held-streams test can hold --held streams.
        "AIOHTTP_CONNECTOR_LIMIT": "100000",
        "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "100000",
    }
    argv = [
        str(where / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    drop = ("DATABASE_URL", "REDIS_HOST", "REDIS_URL")  # no database, no cache
    proc, log = _spawn("litellm", argv, work, cpu, env, drop)
    return Running("litellm", f"http://127.0.0.1:{port}", proc, log, {"config": str(config)})


def start_vllm_router(upstream: str, work: Path, cpu: int | None, root: Path) -> Running:
    where = ensure_venv("vllm-router", VLLM_ROUTER, root)
    port = free_port()
    argv = [
        str(where / "bin" / "vllm-router"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        upstream,
        "--policy",
        "round_robin",  # one worker: skip the cache-aware prefix tree
        "--disable-retries",
        "--disable-circuit-breaker",
        "--worker-startup-check-interval",
        "1",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(free_port()),
        "--log-level",
        "warning",
    ]
    proc, log = _spawn("vllm-router", argv, work, cpu)
    return Running("vllm-router", f"http://127.0.0.1:{port}", proc, log, {"argv": " ".join(argv)})


def start(
    name: str, upstream: str, work: Path, cpu: int | None, root: Path, neurons: int = 1
) -> Running:
    """Start target ``name``; ``neurons`` is how many neurons cortex is given (see above)."""
    if name == "direct":
        return Running("direct", upstream)
    if name == "cortex":
        return start_cortex(upstream, work, cpu, neurons)
    if name == "litellm":
        return start_litellm(upstream, work, cpu, root)
    if name == "vllm-router":
        return start_vllm_router(upstream, work, cpu, root)
    raise ValueError(f"unknown target {name!r}; known: {', '.join(NAMES)}")


def prepare(names: list[str], root: Path) -> None:
    """Install what the chosen targets need before any clock starts."""
    if "litellm" in names:
        ensure_venv("litellm", LITELLM, root)
    if "vllm-router" in names:
        ensure_venv("vllm-router", VLLM_ROUTER, root)
    if "cortex" in names and not (
        Path(sys.executable).with_name("cortex").exists() or shutil.which("cortex")
    ):
        raise SystemExit("cortex is not installed in this interpreter's venv: run make bootstrap")
