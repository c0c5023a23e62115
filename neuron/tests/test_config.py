"""neuron.toml + NEURON_ environment: a broken file is one clear message and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neuron.settings import ConfigError, load_settings

EXAMPLE = Path(__file__).parents[1] / "neuron.example.toml"


def neuron_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuron.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_example_is_valid_and_documents_the_defaults() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.port == 13131
    assert settings.default_models == []
    assert "--trust-remote-code" not in settings.harness.vllm.allowed_engine_args
    defaults = type(settings)()
    assert settings.model_dump(exclude={"harness"}) == defaults.model_dump(exclude={"harness"})
    example = settings.harness.vllm.model_dump(exclude={"python"})
    assert example == defaults.harness.vllm.model_dump(exclude={"python"})


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text("port = 1000\n[harness.vllm]\nstartup_timeout = 5\n")
    monkeypatch.setenv("NEURON_PORT", "2000")
    monkeypatch.setenv("NEURON_HARNESS__VLLM__STARTUP_TIMEOUT", "60")
    settings = load_settings(path)
    assert settings.port == 2000
    assert settings.harness.vllm.startup_timeout == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 1\nhost = ", "not valid TOML: Invalid value (at end of document)"),
        ("port = 1\n[harness", "not valid TOML: Expected ']' at the end of a table declaration"),
        ("prot = 13131", "prot: unknown key"),
        ('port = "high"', "port: Input should be a valid integer"),
        ("[harness.vllm]\nstartup_timeout = -1", "harness.vllm.startup_timeout: Input should be"),
        ("[[default_models]]\nsource = 'x'", "default_models.0.model_id: Field required"),
    ],
)
def test_a_broken_file_is_one_message_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + str(path)):
        load_settings(path)
    done = neuron_cli("--config", str(path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"neuron: invalid configuration: {path}: {message}")
    assert done.stderr.count("\n") == 1  # one line, no traceback


def test_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    done = neuron_cli("--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert (
        done.stderr == f"neuron: invalid configuration: {tmp_path / 'nope.toml'}: file not found\n"
    )


def test_a_bad_environment_value_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_DRAIN_TIMEOUT", "soon")
    done = neuron_cli()
    assert done.returncode == 2
    assert "drain_timeout: Input should be a valid number" in done.stderr


def first_lines(host: str, tmp_path: Path) -> list[str]:
    """What a neuron on ``host`` (port 0: any free one) logs until it serves; then stop it."""
    path = tmp_path / "neuron.toml"
    path.write_text(f'host = "{host}"\nport = 0\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron.cli", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    with proc, proc.stderr as stderr:  # type: ignore[union-attr]
        for line in stderr:
            lines.append(line)
            if "Running on" in line:
                break
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    return lines


def test_no_token_on_a_public_address_is_warned_about(tmp_path: Path) -> None:
    lines = first_lines("0.0.0.0", tmp_path)
    assert "WARNING" in lines[0]
    assert "auth_token is not set and the neuron listens on 0.0.0.0" in lines[0]


def test_loopback_without_a_token_is_not_warned_about(tmp_path: Path) -> None:
    lines = first_lines("127.0.0.1", tmp_path)
    assert not [line for line in lines if "WARNING" in line]
