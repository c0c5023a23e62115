"""The chaos suite's harness: a real ``cortex serve`` process, scripted neuron processes, and
clients that speak raw bytes.

Everything here is bounded: ports come from the OS, readiness is polled with a deadline,
every process is stopped by the context manager that started it (SIGTERM, then SIGKILL),
and every read from a socket has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from neuron.engine.process import free_port

HERE = Path(__file__).resolve().parent
NOFILE = 12_000
"""Open files the test process and cortex get: 5,000 held sockets on each side, and room."""
ERROR_LINE = re.compile(r" ERROR (cortex\.http|cortex\.upstream|asyncio)\b")
"""A line of cortex's log that is a bug of its own (the format is ``cli.py``'s)."""
LOGS: list[tuple[str, Path]] = []
"""The logs of the processes running now, shown with a failing test's report."""
FLOOD_REPORT: list[str] = []
"""What each pipelining flood measured, printed at the end of the run (conftest)."""


def raise_nofile(wanted: int = NOFILE) -> None:
    """Raise this process's soft open-files limit to ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def nonce() -> str:
    return uuid.uuid4().hex


def chat(nonce: str, *, model: str = "m1", stream: bool = False) -> dict[str, Any]:
    """A chat request whose nonce the scripted neuron echoes in its answer."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": nonce}]}


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _deadline_poll(what: str, check: Any, timeout: float, log: Any = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.TransportError, OSError, ValueError, KeyError):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout}s" + (f"\n{log()}" if log else ""))


@dataclass
class NeuronProcess:
    """One scripted neuron (``chaos_neuron.py``) in its own process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return tail(self.log_path.read_text(errors="replace"))

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.endpoint}/-/stats", timeout=5).json()
        return stats

    async def astats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as client:
            stats: dict[str, Any] = (await client.get(f"{self.endpoint}/-/stats")).json()
        return stats

    async def script(self, **changes: Any) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            (await client.post(f"{self.endpoint}/-/script", json=changes)).raise_for_status()

    def nonces(self) -> list[str]:
        return [n for seen in self.stats()["seen"].values() for n in seen]

    def stop_signal(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def cont_signal(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def neuron(tmp_path: Path, name: str, **script: Any) -> Iterator[NeuronProcess]:
    port = free_port()
    log_path = tmp_path / f"neuron-{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "chaos_neuron.py"),
                "--port",
                str(port),
                "--name",
                name,
                "--script",
                json.dumps(script),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = NeuronProcess(name, port, proc, log_path)
    LOGS.append((f"neuron {name}", log_path))
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"neuron {name} exited with {proc.returncode}:\n{running.log()}"
                )
            return running.stats() is not None

        _deadline_poll(f"neuron {name} listening", listening, 20, running.log)
        yield running
    finally:
        _stop(proc)
        LOGS.remove((f"neuron {name}", log_path))


@dataclass
class CortexProcess:
    proc: subprocess.Popen[bytes]
    api_port: int
    metrics_port: int
    log_path: Path
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def metrics(self) -> dict[str, float]:
        """Every sample on ``/metrics``, keyed by its name and labels as written."""
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(self.metrics_url)).text
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    async def in_flight(self) -> float:
        samples = await self.metrics()
        return sum(v for k, v in samples.items() if k.startswith("cortex_inflight_requests{"))

    async def requests_by_status(self) -> dict[str, float]:
        """``cortex_requests_total`` summed per ``status`` label."""
        counts: dict[str, float] = {}
        for key, value in (await self.metrics()).items():
            if key.startswith("cortex_requests_total{"):
                status = re.search(r'status="(\d+)"', key)
                assert status, key
                counts[status.group(1)] = counts.get(status.group(1), 0) + value
        return counts

    async def fleet(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"{self.url}/fleet")
        assert answer.status_code == 200, f"GET /fleet: {answer.status_code} {answer.text}"
        fleet: dict[str, Any] = answer.json()
        return fleet

    async def serves(self) -> bool:
        """``/health`` answers 200 within 5 s (cortex is still serving)."""
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"{self.url}/health")).status_code == 200


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@contextlib.contextmanager
def cortex(
    tmp_path: Path,
    neurons: list[NeuronProcess],
    *,
    gateway: dict[str, Any] | None = None,
    poll: dict[str, Any] | None = None,
    nofile: int = NOFILE,
    hard_nofile: bool = False,
    up: int | None = None,
    auth_keys: list[str] | None = None,
    allow_errors: tuple[str, ...] = (),
) -> Iterator[CortexProcess]:
    """A real ``cortex serve`` in front of ``neurons``, ready when ``up`` of them (default:
    all) are up. ``gateway`` and ``poll`` are written to its TOML file as given.
    ``hard_nofile``: ``nofile`` is the hard limit too (cortex cannot raise its own).
    A test whose cortex logged an ERROR from ``cortex.http``, ``cortex.upstream`` or
    ``asyncio`` fails, unless the line contains one of ``allow_errors``."""
    api, metrics = free_port(), free_port()
    gateway = {"idle_timeout": 5.0, "drain_timeout": 2.0} | (gateway or {})
    poll = {"interval": 0.5, "timeout": 1.0, "down_after": 2} | (poll or {})
    config = tmp_path / "cortex.toml"
    lines = [f"models_config = {_toml(tmp_path / 'models.toml')}", "[gateway]"]
    lines.append(f'listen = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"')
    lines += [f"{k} = {_toml(v)}" for k, v in gateway.items()]
    lines += ["[poll]", *(f"{k} = {_toml(v)}" for k, v in poll.items())]
    if auth_keys:
        lines += ["[auth]", f"api_keys = {json.dumps(auth_keys)}"]
    for n in neurons:
        lines += ["[[neurons]]", f'name = "{n.name}"', f'endpoint = "{n.endpoint}"']
    config.write_text("\n".join(lines) + "\n")
    log_path = tmp_path / "cortex.log"

    def limits() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target if hard_nofile else hard))

    executable = str(Path(sys.executable).with_name("cortex"))
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [executable, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limits,  # only setrlimit between fork and exec
        )
    running = CortexProcess(proc, api, metrics, log_path, config)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"cortex exited with {proc.returncode} before it was ready:\n{tail(running.log())}"
            )
        health = httpx.get(f"{running.url}/health", timeout=2).json()
        httpx.get(running.metrics_url, timeout=2).raise_for_status()
        return bool(health["neurons"]["up"] == (len(neurons) if up is None else up))

    LOGS.append(("cortex", log_path))
    try:
        _deadline_poll("cortex ready with every neuron up", ready, 30, lambda: tail(running.log()))
        yield running
    finally:
        _stop(proc)
        LOGS.remove(("cortex", log_path))
    errors = [
        entry
        for entry in re.split(r"\n(?=\d{4}-\d\d-\d\d )", running.log())
        if ERROR_LINE.search(entry.partition("\n")[0])
        and not any(text in entry for text in allow_errors)
    ]
    assert not errors, "cortex logged an ERROR:\n" + "\n".join(errors[:3])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a SIGSTOP'd process cannot act on SIGTERM
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Reply:
    """What came back on a raw connection: an HTTP answer, or nothing before a close."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False
    """The server closed the connection after the answer (or without one)."""
    raw: bytes = b""

    def error_type(self) -> str | None:
        try:
            error = json.loads(self.body).get("error")
        except ValueError:
            return None
        return error.get("type") if isinstance(error, dict) else None


async def read_reply(reader: asyncio.StreamReader, timeout: float) -> Reply:
    """One answer from ``reader`` (head and ``Content-Length`` body), then whether the
    connection closes within a short grace. Raises ``TimeoutError`` on a hang."""
    async with asyncio.timeout(timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return Reply(status=None, closed=True, raw=exc.partial)
        except ConnectionError:
            return Reply(status=None, closed=True)
        line, *lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for h in lines:
            name, _, value = h.partition(":")
            name = name.strip().lower()
            headers[name] = (
                f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
            )
        body = b""
        if "content-length" in headers:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                body = await reader.readexactly(int(headers["content-length"]))
    closed = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5 if headers.get("connection") != "close" else 5):
            try:
                closed = await reader.read(1) == b""
            except ConnectionError:
                closed = True
    return Reply(status=status, headers=headers, body=body, closed=closed, raw=head + body)


async def exchange(port: int, *pieces: bytes, timeout: float = 10.0, pause: float = 0.0) -> Reply:
    """Send ``pieces`` (``pause`` seconds apart) on a fresh connection and read the answer,
    all within ``timeout`` seconds. A server that answers or closes before everything is
    sent is fine: sending stops and its answer is read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)

    sender = asyncio.create_task(send())
    try:
        return await read_reply(reader, timeout)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.transport.abort()
