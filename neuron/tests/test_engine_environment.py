"""Engines get a minimal environment: never the neuron's token or other secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from neuron_testing import fake_harness, running, settings_for

from neuron.engine.process import engine_env
from neuron.settings import ConfigError, Harnesses, VllmHarness, load_settings


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_the_engine_environment_has_no_neuron_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEURON_AUTH_TOKEN", "tok3n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    harness = fake_harness(EXTRA_FOR_ENGINE="yes")
    settings = settings_for(auth_token="tok3n", harness=Harnesses(vllm=harness))
    async with running(settings, headers={"authorization": "Bearer tok3n"}) as neuron:
        response = await neuron.load("m")
        assert response.status_code == 200, response.text
        guard = response.json()["model"]["engine"]["pid"]
        (engine,) = children(guard)
        for pid in (guard, engine):
            env = environ(pid)
            assert "tok3n" not in "".join(env.values())
            assert not [name for name in env if name.startswith("NEURON_")]
            assert "AWS_SECRET_ACCESS_KEY" not in env
            assert env["VLLM_LOGGING_LEVEL"] == "INFO"  # on the pass-through list
            assert env["EXTRA_FOR_ENGINE"] == "yes"  # [harness.vllm.env]
            assert "PATH" in env


def test_harness_env_cannot_hand_engines_neuron_variables(tmp_path: Path) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text('[harness.vllm.env]\nNEURON_AUTH_TOKEN = "x"\n')
    with pytest.raises(ConfigError, match=r"harness\.vllm\.env: .*NEURON_"):
        load_settings(path)


def test_neuron_variables_in_any_case_never_reach_an_engine() -> None:
    """Even with a pass-through that lets everything else through."""
    harness = VllmHarness(env_passthrough=["*"])
    environ = {
        "neuron_auth_token": "lower",
        "Neuron_Auth_Token": "mixed",
        "NEURON_AUTH_TOKEN": "upper",
        "PATH": "/usr/bin",
    }
    env = engine_env(harness, None, environ)
    assert env["PATH"] == "/usr/bin"
    assert not [name for name in env if name.upper().startswith("NEURON_")]


def test_harness_env_cannot_hand_engines_lower_case_neuron_variables(tmp_path: Path) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text('[harness.vllm.env]\nneuron_auth_token = "x"\n')
    with pytest.raises(ConfigError, match=r"harness\.vllm\.env: .*NEURON_"):
        load_settings(path)


@pytest.mark.parametrize("name", ["neuron_auth_token", "Neuron_Port", "nEURON_X"])
def test_a_neuron_variable_not_in_upper_case_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """What the neuron reads as its token is what it keeps from engines: one spelling.

    pydantic-settings would read ``neuron_auth_token`` as the token (it matches names in any
    case) while the engine filter drops it; rather than read it, the neuron refuses to start.
    """
    monkeypatch.setenv(name, "lower")
    with pytest.raises(ConfigError, match=rf"environment: {name}: the prefix must be upper case"):
        load_settings(None)


def test_the_cli_exits_2_naming_a_lower_case_neuron_variable() -> None:
    env = {**os.environ, "neuron_auth_token": "lower"}
    done = subprocess.run(
        [sys.executable, "-m", "neuron.cli"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid configuration: environment: neuron_auth_token" in done.stderr


def test_the_upper_case_prefix_is_read_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_AUTH_TOKEN", "upper")
    monkeypatch.setenv("NEURON_HARNESS__VLLM__STARTUP_TIMEOUT", "60")
    monkeypatch.setenv("OTHER_neuron_x", "not ours")
    settings = load_settings(None)
    assert settings.auth_token == "upper"
    assert settings.harness.vllm.startup_timeout == 60
