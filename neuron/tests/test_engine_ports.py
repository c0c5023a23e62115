"""An engine's port is taken outside the kernel's ephemeral range, where any outgoing
connection could take it before the engine binds it, or from ``[harness.vllm] engine_ports``;
never one of the neuron's other engines' ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from neuron_testing import fake_harness, running, settings_for, worker_ports

from neuron.engine import process
from neuron.engine.process import PRIVATE_PORTS_FROM, free_port
from neuron.settings import ConfigError, Harnesses, load_settings


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


def engine_range(size: int) -> tuple[int, int]:
    """``size`` ports of this test worker's own (where no other worker picks), free now."""
    low, high = worker_ports(1)
    for first in range(low, high - size, size):
        if all(_free(port) for port in range(first, first + size)):
            return first, first + size - 1
    raise AssertionError(f"no {size} free ports in {low}-{high}")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_picks_in_a_row_never_repeat_a_port_until_the_range_is_used_up() -> None:
    """Engines bind their port only once up: a port picked a moment ago is still free, and a
    random pick could hand it out again (two servers of one test got the same port so)."""
    ports = engine_range(8)
    assert sorted(free_port(ports) for _ in range(8)) == list(range(ports[0], ports[1] + 1))
    picks = [free_port() for _ in range(200)]
    assert len(set(picks)) == 200


def test_a_configured_range_is_kept_and_ports_taken_are_skipped() -> None:
    ports = engine_range(4)
    seen = {free_port(ports) for _ in range(40)}
    assert seen <= set(range(ports[0], ports[1] + 1)), seen
    only = free_port(ports, taken=set(range(ports[0], ports[1])))
    assert only == ports[1]


def test_a_range_with_no_free_port_is_an_error() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(OSError, match=f"no free port in engine_ports {port}-{port}"):
            free_port((port, port))
        with pytest.raises(OSError, match="no free port"):
            free_port(
                (port + 1, port + 1) if port < 65535 else (port - 1, port - 1),
                taken={port + 1, port - 1},
            )


async def test_a_load_that_finds_no_free_engine_port_is_502_and_the_next_one_loads() -> None:
    port = engine_range(1)[0]
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        harness = fake_harness().model_copy(update={"engine_ports": (port, port)})
        async with running(settings_for(harness=Harnesses(vllm=harness))) as neuron:
            response = await neuron.load("m1")
            assert response.status_code == 502, response.text
            error = response.json()["error"]
            assert error["code"] == "engine_failed"
            assert error["message"] == (
                f"cannot start an engine for m1: no free port in engine_ports {port}-{port}; "
                "widen [harness.vllm] engine_ports or unload a model"
            )
            assert await neuron.models() == {}
            held.close()  # the port is free again: the same load now starts
            response = await neuron.load("m1")
            assert response.status_code == 200, response.text
            assert (await neuron.models())["m1"]["status"] == "ready"


@pytest.mark.parametrize("ports", ["[2000, 1000]", "[80, 90]", "[60000, 70000]", "[20000]"])
def test_a_bad_engine_ports_range_is_a_config_error(tmp_path: Path, ports: str) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(f"[harness.vllm]\nengine_ports = {ports}\n")
    with pytest.raises(ConfigError, match=r"harness\.vllm\.engine_ports"):
        load_settings(path)


def test_engine_ports_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text("[harness.vllm]\nengine_ports = [21000, 21099]\n")
    assert load_settings(path).harness.vllm.engine_ports == (21000, 21099)
    monkeypatch.setenv("NEURON_HARNESS__VLLM__ENGINE_PORTS", "[20000, 20999]")
    assert load_settings(path).harness.vllm.engine_ports == (20000, 20999)
