"""Helpers for the end-to-end tests: a real ``neuron`` process driving real vLLM engines.

Everything here is deliberately plain: the neuron is started through its console script
with a TOML file, talked to over HTTP, and observed from the outside (process groups,
``/proc``), exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from neuron.engine.process import free_port

REPO = Path(__file__).resolve().parents[2]
MAKE_TINY_MODEL = REPO / "scripts" / "make_tiny_model.py"

ENGINE_START_TIMEOUT = 300.0
"""Seconds one real vLLM engine may take to become healthy on a loaded 2-core machine."""
MODEL_LAYERS = 48
"""Layers of the test model (see the ``tiny_model`` fixture): ~80 tokens/s here."""
STREAM_TOKENS = 200
"""With ``ignore_eos`` a stream of this many tokens lasts a couple of seconds."""
ABORT_TOKENS = 4000
"""A stream the abort tests abandon: ~50 s of work unless something stops it. Long enough that
a starved CI machine still cannot produce half of it between the close and the engine's abort
(through cortex and a neuron that took 6.6 s once, with vLLM holding both cores)."""
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    # vLLM's single-process executor: the model runs in the engine core's process, as on one
    # GPU, instead of a third process that imports torch and vLLM again (which vLLM's CPU
    # platform otherwise forces). Same API server, engine core and control path; an engine
    # is ready in about 20 s here instead of 35.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # Without the worker process nothing binds the model's OpenMP threads to a core: two
    # threads spinning beside the API server on two cores halve the decode speed at times.
    "OMP_NUM_THREADS": "1",
}
"""The engines' environment in every e2e neuron's ``[harness.vllm] env``."""
BAD_SOURCE = os.path.join(tempfile.gettempdir(), "nonexistent", "model")  # in allowed_paths

TIMINGS: list[tuple[str, float]] = []
"""``(what, seconds)`` measured during the run; printed in the terminal summary."""
RUNNING: list[NeuronProcess] = []
"""Neurons started and not yet cleaned up; their logs are attached to failing reports."""
STARTED: list[NeuronProcess] = []
"""Every neuron started in this run: the tests fail on an ERROR any of them logged."""
NEURON_ERROR = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) (?:neuron|asyncio)\b.*$", re.MULTILINE)
"""A line the neuron (or its event loop) logged at ERROR; an engine's own output is logged by
``neuron.engine`` at INFO, whatever it says."""
ENGINE_STARTS: list[str] = []
"""The model id of every engine start the neurons of this run logged (read from each neuron's
log when it is cleaned up); the terminal summary counts them. An engine start is most of an
e2e test's time, so this is the number to keep low."""


def record(what: str, seconds: float) -> None:
    TIMINGS.append((what, seconds))


def neuron_executable() -> Path:
    """The ``neuron`` console script installed next to this interpreter."""
    script = Path(sys.executable).parent / "neuron"
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: install the neuron package in this venv")
    return script


def tiny_spec(model_dir: Path, model_id: str = "tiny", **extra: Any) -> dict[str, Any]:
    """A ``ModelSpec`` that serves the tiny test model cheaply on CPU."""
    return {
        "model_id": model_id,
        "source": str(model_dir),
        "dtype": "float32",
        "max_model_len": 4160,  # room for ABORT_TOKENS
        "engine_args": ["--enforce-eager"],
        **extra,
    }


def broken_spec(model_id: str = "broken") -> dict[str, Any]:
    """A ``ModelSpec`` whose engine exits while starting (the source does not exist)."""
    return {"model_id": model_id, "source": BAD_SOURCE, "dtype": "float32", "max_model_len": 256}


# --- config ------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    path: Path,
    *,
    port: int,
    default_models: list[dict[str, Any]] | None = None,
    drain_timeout: float = 60.0,
    stop_timeout: float = 15.0,
    env: dict[str, str] | None = None,
    max_loaded_models: int | None = None,
    health_interval: float = 5.0,
    sleep: dict[str, Any] | None = None,
) -> Path:
    lines = [
        'host = "127.0.0.1"',
        f"port = {port}",
        *([f"max_loaded_models = {max_loaded_models}"] if max_loaded_models else []),
        f"drain_timeout = {drain_timeout!r}",
        f"health_interval = {health_interval!r}",
        'log_level = "info"',
        "",
        "[harness.vllm]",
        f"python = {toml_value(sys.executable)}",
        f"startup_timeout = {ENGINE_START_TIMEOUT!r}",
        f"stop_timeout = {stop_timeout!r}",
        f"env = {toml_value({**ENGINE_ENV, **(env or {})})}",
        # The tiny model is built under pytest's temporary folder; cortex loads it from there.
        f"allowed_paths = {toml_value([tempfile.gettempdir()])}",
        "log_tail_lines = 40",
    ]
    if sleep is not None:
        lines += ["", "[sleep]", *(f"{k} = {toml_value(v)}" for k, v in sleep.items())]
    for spec in default_models or []:
        lines += ["", "[[default_models]]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in spec.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- processes ---------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """True while any process of the group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.1)
    return not group_alive(pgid)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def engine_groups(neuron_pid: int) -> set[int]:
    """Process groups of the engines a neuron started, found via their guard's command line.

    Each engine runs as ``python -I .../neuron/engine/guard.py <neuron pid> -- ...`` leading its
    own group; this finds them even after the neuron itself is gone.
    """
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-2]):
            if arg.endswith(b"/neuron/engine/guard.py") and argv[i + 1] == str(neuron_pid).encode():
                with contextlib.suppress(OSError):
                    found.add(os.getpgid(int(entry.name)))
                break
    return found


@dataclass(eq=False)
class NeuronProcess:
    """One ``neuron`` subprocess; ``url`` is its HTTP base, ``log_path`` its stderr."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    started: float
    engines_seen: set[int] = field(default_factory=set)
    counted: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def models(self) -> dict[str, dict[str, Any]]:
        """``GET /models`` keyed by id (and remembers every engine pid it shows)."""
        response = httpx.get(f"{self.url}/models", timeout=30)
        response.raise_for_status()
        models = {m["id"]: m for m in response.json()}
        self.note_engines(models.values())
        return models

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/health", timeout=30)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def note_engines(self, infos: Any) -> None:
        for info in infos:
            engine = info.get("engine") or {}
            if engine.get("pid"):
                self.engines_seen.add(int(engine["pid"]))

    def wait_ready(self, timeout: float) -> float:
        """Poll ``/health`` until the neuron is ``ready``; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            if self.health()["status"] == "ready":
                return time.monotonic() - self.started
            time.sleep(0.5)
        raise AssertionError(f"neuron not ready after {timeout:g}s; /models: {self.models()}")

    def check_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"neuron exited with status {code}:\n{tail(self.log())}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the neuron and wait for it; its exit status, or None if it did not exit."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self) -> list[str]:
        """Stop the neuron (gracefully if it still runs), then SIGKILL whatever is left.

        Returns what had to be killed by force.
        """
        forced: list[str] = []
        groups = self.engines_seen | engine_groups(self.pid)
        if self.proc.poll() is None and self.stop(timeout=60) is None:
            forced.append(f"neuron {self.pid} ignored SIGTERM for 60s")
        if self.proc.poll() is None:
            kill_group(self.pid)  # the neuron leads its own session
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        for pgid in groups | engine_groups(self.pid):
            if group_alive(pgid):
                forced.append(f"engine process group {pgid} was still running")
                kill_group(pgid)
                wait_group_gone(pgid, 10)
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)
        if not self.counted:
            self.counted = True
            ENGINE_STARTS.extend(re.findall(r"starting engine for (\S+):", self.log()))
        return forced


def start_neuron(config: Path, log_path: Path, *, timeout: float = 60.0) -> NeuronProcess:
    """Start ``neuron --config CONFIG`` and return once its ``/health`` answers."""
    text = config.read_text(encoding="utf-8")
    port = next(
        int(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith("port =")
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(neuron_executable()), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    neuron = NeuronProcess(
        proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path, started=time.monotonic()
    )
    RUNNING.append(neuron)
    STARTED.append(neuron)
    deadline = time.monotonic() + timeout
    while True:
        try:
            neuron.check_running()
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{neuron.url}/health", timeout=2).raise_for_status()
                return neuron
            if time.monotonic() > deadline:
                raise AssertionError(f"neuron did not answer /health within {timeout:g}s")
            time.sleep(0.1)
        except BaseException:
            neuron.cleanup()
            print(tail(neuron.log()), file=sys.stderr)  # noqa: T201 - shown on failure
            raise


@contextlib.contextmanager
def neuron_running(config: Path, log_path: Path) -> Iterator[NeuronProcess]:
    """A started neuron; on exit everything it started is killed (and leftovers reported)."""
    neuron = start_neuron(config, log_path)
    try:
        yield neuron
    finally:
        complaints = neuron.cleanup()
        if complaints:
            print("\n".join(complaints), file=sys.stderr)  # noqa: T201 - shown on failure


@dataclass(eq=False)
class SharedNeuron:
    """One neuron whose default models include ``spec``'s, shared by the e2e tests that need a
    ready engine but not a fresh one (the ``shared_neuron`` and ``defaults_neuron`` fixtures:
    one of each per session).

    ``ready()`` gives the running neuron with ``spec``'s model ready: started (and its engine
    waited for) on first use, started again if a test left it dead, and the model loaded
    again if a test unloaded it, so the tests that share it may run in any order: the order
    only decides how many engines start. A test that kills it calls ``restart()`` and leaves
    the new one, on the same port and configuration, to the tests after it; a test that
    watches it activate calls ``fresh()``. Tests leave it serving its models, idle.
    """

    config: Path
    logs: Path
    spec: dict[str, Any]
    current: NeuronProcess | None = None
    starts: int = 0

    def ready(self) -> NeuronProcess:
        """The shared neuron, ``ready``, with ``spec``'s model ready."""
        if self.current is None or self.current.proc.poll() is not None:
            return self.restart()
        neuron = self.current
        neuron.wait_ready(ENGINE_START_TIMEOUT)
        if neuron.models().get(self.spec["model_id"], {}).get("status") != "ready":
            response = httpx.post(
                f"{neuron.url}/models/load", json=self.spec, timeout=ENGINE_START_TIMEOUT + 60
            )
            assert response.status_code == 200, response.text
        return neuron

    def restart(self) -> NeuronProcess:
        """Clean up the current neuron (whatever state it is in), start a new one, wait
        until it is ready; returns it."""
        self.fresh().wait_ready(ENGINE_START_TIMEOUT)
        assert self.current is not None
        return self.current

    def fresh(self) -> NeuronProcess:
        """A neuron started now and not waited for, for a test that watches it activate;
        the current one, if any, is cleaned up first (no cost when that test is the first
        to use this neuron). The tests after it get it through ``ready()``."""
        self.close()
        self.starts += 1
        self.current = start_neuron(
            self.config, self.logs / f"{self.config.stem}-{self.starts}.log"
        )
        return self.current

    def close(self) -> None:
        if self.current is not None:
            complaints = self.current.cleanup()
            if complaints:
                print("\n".join(complaints), file=sys.stderr)  # noqa: T201 - shown on failure
            self.current = None


def tail(text: str, lines: int = 150) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- HTTP --------------------------------------------------------------------------------


def client(neuron: NeuronProcess) -> httpx.AsyncClient:
    """An async client for ``neuron``; a read timeout long enough for an engine start."""
    return httpx.AsyncClient(
        base_url=neuron.url,
        timeout=httpx.Timeout(ENGINE_START_TIMEOUT + 60, connect=10.0),
    )


def sse_data(lines: list[str]) -> list[str]:
    """The ``data:`` payloads of an SSE stream, in order."""
    return [line[len("data:") :].strip() for line in lines if line.startswith("data:")]


def sse_events(lines: list[str]) -> list[str]:
    """The ``event:`` names of an SSE stream, in order."""
    return [line[len("event:") :].strip() for line in lines if line.startswith("event:")]


def prometheus_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` whose labels include ``labels`` (summed if several)."""
    total: float | None = None
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total = (total or 0.0) + float(value)
    return total


def chat_body(model: str, *, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello, how are you today?"}],
        "max_tokens": max_tokens,
        **extra,
    }


async def list_models(c: httpx.AsyncClient, neuron: NeuronProcess) -> dict[str, dict[str, Any]]:
    """``GET /models`` keyed by id (and remembers every engine pid it shows, for cleanup)."""
    response = await c.get("/models")
    assert response.status_code == 200, response.text
    models = {m["id"]: m for m in response.json()}
    neuron.note_engines(models.values())
    return models


async def load(c: httpx.AsyncClient, neuron: NeuronProcess, spec: dict[str, Any]) -> httpx.Response:
    """``POST /models/load`` (remembers the engine pid of a successful load, for cleanup)."""
    response = await c.post("/models/load", json=spec)
    if response.status_code == 200:
        neuron.note_engines([response.json()["model"]])
    return response


async def wait_for_model(
    c: httpx.AsyncClient,
    neuron: NeuronProcess,
    model_id: str,
    status: str,
    timeout: float,
) -> dict[str, Any]:
    """Poll ``/models`` until ``model_id`` has ``status``; returns its ``ModelInfo``."""
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        info = (await list_models(c, neuron)).get(model_id)
        if info is not None and info["status"] == status:
            return info
        await asyncio.sleep(0.2)
    raise AssertionError(f"{model_id} not {status} after {timeout:g}s: {info}")


async def async_wait_group_gone(pgid: int, timeout: float) -> float | None:
    """Seconds until process group ``pgid`` is empty, or None if it outlived ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if not group_alive(pgid):
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    return None


async def engine_metric(engine: httpx.AsyncClient, name: str, model: str) -> float:
    """A sample from the engine's own ``/metrics`` (vLLM labels it with the served name).

    ``engine`` should be a client opened before the generation being watched: a busy vLLM
    API server answers its kept-alive connections sooner than new ones.
    """
    response = await engine.get("/metrics")
    assert response.status_code == 200, response.text
    value = prometheus_value(response.text, name, model_name=model)
    assert value is not None, f"{name} for {model} not in the engine's /metrics"
    return value


# --- cortex ------------------------------------------------------------------------------


@contextlib.contextmanager
def cortex_serving(
    tmp_path: Path,
    name: str,
    neurons: dict[str, str],
    catalogue: Sequence[dict[str, Any]] = (),
    loading: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
) -> Iterator[tuple[str, str]]:
    """``cortex serve`` with ``catalogue`` in front of ``neurons``; yields (API, metrics) URLs."""
    api, metrics = free_port(), free_port()
    models = tmp_path / f"{name}-models.toml"
    models.write_text(
        "".join(
            "[[models]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in m.items()) + "\n"
            for m in catalogue
        ),
        encoding="utf-8",
    )
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f"models_config = {toml_value(str(models))}\n"
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        "[poll]\ninterval = 0.5\ntimeout = 2.0\ndown_after = 2\n"
        "[loading]\n"
        + "".join(f"{k} = {toml_value(v)}\n" for k, v in (loading or {}).items())
        + "[routing]\n"
        + "".join(f"{k} = {toml_value(v)}\n" for k, v in (routing or {}).items())
        + "".join(
            f"[[neurons]]\nname = {toml_value(n)}\nendpoint = {toml_value(url)}\n"
            for n, url in neurons.items()
        ),
        encoding="utf-8",
    )
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("cortex")), "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{api}", f"http://127.0.0.1:{metrics}/metrics"
    except BaseException:
        print(tail(log.read_text(errors="replace")), file=sys.stderr)  # noqa: T201
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


async def wait_until(check: Any, timeout: float, what: str) -> None:
    """Await ``check()`` every 0.25 s until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if await check():
                return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")
