"""`cortex serve` under systemd (Type=notify): READY=1 once both listeners are bound, never before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from cortex_testing import free_port


def _config(tmp_path: Path, api: int, metrics: int) -> Path:
    config = tmp_path / "cortex.toml"
    (tmp_path / "models.toml").write_text("")
    config.write_text(
        f'models_config = "{tmp_path / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
    )
    return config


def _start(config: Path, notify: str) -> subprocess.Popen[bytes]:
    cortex = str(Path(sys.executable).with_name("cortex"))
    env = {**os.environ, "NOTIFY_SOCKET": notify}
    with (config.parent / "cortex.log").open("wb") as log:
        return subprocess.Popen([cortex, "serve", "--config", str(config)], env=env, stderr=log)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(20)


def test_ready_once_both_listeners_are_bound(tmp_path: Path) -> None:
    api, metrics = free_port(), free_port()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        systemd.settimeout(20)
        proc = _start(_config(tmp_path, api, metrics), str(tmp_path / "notify"))
        try:
            assert systemd.recv(256) == b"READY=1"
            for port in (api, metrics):  # both accept connections the moment READY=1 is sent
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            assert httpx.get(f"http://127.0.0.1:{api}/health", timeout=10).status_code == 200
        finally:
            _stop(proc)


def test_abstract_notify_socket(tmp_path: Path) -> None:
    name = f"cortex-test-{os.getpid()}-{free_port()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(20)
        proc = _start(_config(tmp_path, free_port(), free_port()), "@" + name)
        try:
            assert systemd.recv(256) == b"READY=1"
        finally:
            _stop(proc)


def test_no_ready_when_a_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        systemd.bind(str(tmp_path / "notify"))
        systemd.setblocking(False)
        config = _config(tmp_path, free_port(), taken.getsockname()[1])
        proc = _start(config, str(tmp_path / "notify"))
        assert proc.wait(20) == 1
        assert "cannot listen on" in (tmp_path / "cortex.log").read_text()
        assert not _pending(systemd)


def _pending(sock: socket.socket) -> bool:
    try:
        sock.recv(256)
    except BlockingIOError:
        return False
    return True
