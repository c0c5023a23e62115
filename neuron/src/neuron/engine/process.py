"""One vLLM OpenAI server as a supervised child process.

The engine runs as ``python -I .../neuron/engine/guard.py <neuron pid> -- <engine argv>`` in a
new process group (see :mod:`neuron.engine.guard`). Its stdout and stderr are merged into one
pipe that a reader task drains continuously, so a chatty engine never blocks on a full
pipe; each line goes to the neuron's log prefixed by the model id, and the last few are
kept for error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping

import httpx

from neuron.engine import guard
from neuron.errors import EngineFailed
from neuron.settings import ModelSpec, VllmHarness, is_neuron_variable

log = logging.getLogger("neuron.engine")

GUARD = guard.__file__
HEALTH_POLL = 0.5
READ_CHUNK = 65536
# For the one-line summary of a failed start only (never for control flow): the last line
# that looks like a raised exception, e.g. "OSError: Repo id must be ...".
ERROR_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception): ")
POLLED = ("/health", "/metrics")
"""The engine paths the neuron itself reads every few seconds (start-up health, the watch and
every scrape of the neuron's ``/metrics``): kept out of the engine's access log, which would
otherwise fill the neuron's log (and an operator's journal) with the neuron's own polls."""
# Shutdown chatter of vLLM's native extensions that would push the real error out of the tail.
NOISE = ("nanobind:", "- leaked ", "... skipped remainder")


POOL_KEEP_ALIVE_S = 60
"""How long the neuron keeps an idle connection to an engine for the next request."""
ENGINE_KEEP_ALIVE_S = 75
"""How long an engine keeps an idle connection open (``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``, which
vLLM reads since mid-2025, vllm-project/vllm#18472; its default is uvicorn's 5 s). Longer than
the pool keeps one: else a request sent on a connection at the moment the engine closes it gets
no answer (a 502 to its client), which with 5 s against 60 s happened to a model used again
about 5 s after its last request."""


_turn = itertools.count(secrets.randbelow(1 << 16))
"""Where :func:`free_port` looks next. Ports are handed out in turn from a random start, not
at random: a port picked a moment ago is still free until its engine binds it (many seconds
later), and a random pick could hand it out again meanwhile."""


def free_port(ports: tuple[int, int] | None = None, taken: Collection[int] = ()) -> int:
    """A free loopback port for an engine, which binds it only when it is up (many seconds
    later), and not one of ``taken`` (the ports of the engines this neuron already runs).

    From ``ports`` (both ends included: ``[harness.vllm] engine_ports``) where it is set; an
    error (``OSError``) when no port there is free. Else outside the kernel's ephemeral
    range, from :data:`PRIVATE_PORTS_FROM` up to it, where there is room: a port ``bind(0)``
    picks comes from that range, and any outgoing connection on the host may take it as its
    own local port meanwhile, and the engine's start then fails ("address already in use";
    seen in the test suite with many processes connecting at once); failing that, any free
    port.
    """
    low, high = ports if ports is not None else (PRIVATE_PORTS_FROM, _ephemeral_low() - 1)
    size = high - low + 1
    for _ in range(max(size, 0)):
        port = low + next(_turn) % size
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    if ports is not None:
        raise OSError(errno.EADDRINUSE, f"no free port in engine_ports {low}-{high}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PRIVATE_PORTS_FROM = 20000
"""The lowest port :func:`free_port` picks outside the ephemeral range."""


def _ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port of the kernel's ephemeral range (Linux); 0 where it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def engine_argv(spec: ModelSpec, harness: VllmHarness, port: int) -> list[str]:
    """The engine command line for ``spec`` (vLLM's own flag names)."""
    argv = [
        *harness.argv_prefix,
        "--model",
        spec.resolved_source,
        "--served-model-name",
        spec.model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # vLLM's own filter (a uvicorn log config it builds): the exact paths only, so every
        # request a client makes keeps its access-log line.
        f"--disable-access-log-for-endpoints={','.join(POLLED)}",
    ]
    if spec.quant:
        argv += ["--quantization", spec.quant]
    if spec.dtype:
        argv += ["--dtype", spec.dtype]
    if spec.max_model_len:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.tensor_parallel > 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel)]
    argv += [
        "--gpu-memory-utilization",
        str(spec.gpu_memory_utilization or harness.gpu_memory_utilization),
    ]
    if harness.hf_cache:
        argv += ["--download-dir", harness.hf_cache]
    return argv + list(spec.engine_args)


def engine_env(
    harness: VllmHarness, devices: list[int] | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The engine's whole environment: the names ``env_passthrough`` lets through from
    ``environ`` (the neuron's own), then ``[harness.vllm.env]``, then what the neuron sets
    itself (``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``: see :data:`ENGINE_KEEP_ALIVE_S`;
    ``CUDA_VISIBLE_DEVICES``). ``NEURON_*`` in any case (the neuron's token among them) never
    passes: an engine's environment is readable in
    ``/proc/<pid>/environ`` by anything running as the neuron's user."""
    environ = os.environ if environ is None else environ
    names = [p for p in harness.env_passthrough if not p.endswith("*")]
    prefixes = tuple(p[:-1] for p in harness.env_passthrough if p.endswith("*"))
    env = {
        name: value
        for name, value in environ.items()
        if (name in names or name.startswith(prefixes)) and not is_neuron_variable(name)
    }
    env.update(harness.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(ENGINE_KEEP_ALIVE_S)
    if harness.hf_cache:
        env["HF_HOME"] = harness.hf_cache
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    return env


class EngineProcess:
    """A started (or starting) engine for one model.

    :meth:`start` returns once the engine answers ``/health``, or raises
    :class:`EngineFailed` with the exit status and last log lines. :meth:`stop` is
    idempotent and safe to call concurrently with :meth:`start` (it cancels the start).
    ``on_exit`` is called once if the engine exits without :meth:`stop` being asked.
    """

    def __init__(
        self,
        spec: ModelSpec,
        harness: VllmHarness,
        client: httpx.AsyncClient,
        *,
        devices: list[int] | None = None,
        on_exit: Callable[[EngineProcess], None] | None = None,
        sleep_mode: bool = False,
        taken: Collection[int] = (),
    ) -> None:
        """Raises OSError when ``harness.engine_ports`` has no free port (none of ``taken``:
        the ports of the neuron's other engines)."""
        self.spec = spec
        self.sleep_mode = sleep_mode
        """Development routes on (``/sleep``, ``/wake_up``: loopback only, never proxied), and
        ``--enable-sleep-mode`` where there are GPUs (vLLM refuses it on CPU)."""
        self.harness = harness
        self.devices = devices
        self.port = free_port(harness.engine_ports, taken)
        self.url = f"http://127.0.0.1:{self.port}"
        self._client = client
        self._on_exit = on_exit
        self._tail: deque[str] = deque(maxlen=harness.log_tail_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._stopping = False
        self.returncode: int | None = None
        self.started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self.returncode is None

    def tail(self) -> list[str]:
        return list(self._tail)

    def failure(self, what: str) -> str:
        """``what: <the engine's last error line>``, then its last lines, for ``ModelInfo.error``.

        The first line is what a user sees in a 404/502 message; the rest is for operators.
        """
        tail = self.tail()
        if not tail:
            return f"{what} (no output)"
        errors = [line for line in tail if ERROR_LINE.search(line)]
        summary = (errors or tail)[-1]
        return f"{what}: {summary}\n--- last engine output ---\n" + "\n".join(tail)

    async def start(self) -> None:
        argv = [
            # By path and isolated (-I): the guard is standard library only, so it runs the
            # same wherever this package is installed (the RPM keeps it off sys.path).
            sys.executable,
            "-I",
            GUARD,
            str(os.getpid()),
            "--",
            *engine_argv(self.spec, self.harness, self.port),
            *(["--enable-sleep-mode"] if self.sleep_mode and self.devices else []),
        ]
        log.info("starting engine for %s: %s", self.spec.model_id, " ".join(argv[5:]))
        self.started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=engine_env(self.harness, self.devices)
            | ({"VLLM_SERVER_DEV_MODE": "1"} if self.sleep_mode else {}),
            start_new_session=True,
        )
        name = self.spec.model_id
        self._reader = asyncio.create_task(self._read_output(self._proc), name=f"log {name}")
        self._waiter = asyncio.create_task(self._wait(self._proc), name=f"wait {name}")
        try:
            await asyncio.wait_for(self._until_healthy(), self.harness.startup_timeout)
        except TimeoutError:
            await self.stop()
            raise EngineFailed(
                self.failure(
                    f"engine for {self.spec.model_id} was not healthy "
                    f"after {self.harness.startup_timeout:g}s"
                )
            ) from None
        except BaseException:
            await self.stop()
            raise

    async def _until_healthy(self) -> None:
        while True:
            if self.returncode is not None:
                raise EngineFailed(
                    self.failure(
                        f"engine for {self.spec.model_id} exited with status "
                        f"{self.returncode} while starting"
                    )
                )
            with contextlib.suppress(httpx.TransportError):
                response = await self._client.get(f"{self.url}/health", timeout=2.0)
                if response.status_code == 200:
                    return
            await asyncio.sleep(HEALTH_POLL)

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:
            return
        pending = b""
        while chunk := await proc.stdout.read(READ_CHUNK):
            pending += chunk.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._log_line(raw)
            if len(pending) > READ_CHUNK:  # a line with no end: log what we have
                self._log_line(pending)
                pending = b""
        if pending:
            self._log_line(pending)

    def _log_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        log.info("[%s] %s", self.spec.model_id, line)
        if not line.lstrip().startswith(NOISE):
            self._tail.append(line)

    async def _wait(self, proc: asyncio.subprocess.Process) -> None:
        self.returncode = await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
        if not self._stopping:
            log.warning(
                "engine for %s exited on its own with status %s",
                self.spec.model_id,
                self.returncode,
            )
            if self._on_exit is not None:
                self._on_exit(self)  # first: stop routing requests to a dead engine
            await self._reap_group(proc.pid)

    async def stop(self) -> None:
        """SIGTERM the engine's process group, wait (bounded) until it is empty, SIGKILL the rest.

        Concurrent and repeated calls share one stop, so the engine sees one SIGTERM.
        """
        self._stopping = True
        if self._proc is None:
            return
        if self._stopper is None:
            name = f"stop {self.spec.model_id}"
            self._stopper = asyncio.create_task(self._stop(self._proc), name=name)
        await asyncio.shield(self._stopper)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        await self._reap_group(proc.pid)
        if self._waiter is not None:
            await self._waiter

    async def _reap_group(self, pgid: int) -> None:
        """``pgid`` is the guard's pid: it leads a session, so it is also the group id."""
        if not _signal_group(pgid, signal.SIGTERM):
            return
        timeout = self.harness.stop_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if not _signal_group(pgid, 0):
                return
        log.warning("engine %s ignored SIGTERM for %gs; killing it", self.spec.model_id, timeout)
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when the group has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a zombie leader not yet reaped still counts as present
        return True
    return True
