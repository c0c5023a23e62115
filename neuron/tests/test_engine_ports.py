"""An engine's port is taken outside the kernel's ephemeral range, where any outgoing
connection could take it before the engine binds it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from neuron.engine import process
from neuron.engine.process import PRIVATE_PORTS_FROM, free_port


def test_ports_come_from_below_the_ephemeral_range_and_are_free() -> None:
    low = process._ephemeral_low()
    if low <= PRIVATE_PORTS_FROM:
        pytest.skip(f"this kernel's ephemeral range starts at {low}")
    ports = {free_port() for _ in range(50)}
    assert all(PRIVATE_PORTS_FROM <= p < low for p in ports), sorted(ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nothing holds it


def test_without_room_below_the_range_the_kernel_picks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unreadable = str(tmp_path / "missing")
    assert process._ephemeral_low(unreadable) == 0
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("1024\t65535\n")
    assert process._ephemeral_low(str(range_file)) == 1024
    monkeypatch.setattr(process, "_ephemeral_low", lambda: 1024)
    port = free_port()
    assert 1024 <= port <= 65535
