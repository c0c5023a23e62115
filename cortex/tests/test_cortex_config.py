"""cortex.toml + CORTEX_ environment + models.toml: a broken one is one message and exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.settings import ConfigError, CortexSettings, load_catalogue, load_settings

HERE = Path(__file__).parents[1]


def cortex_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def test_the_examples_are_valid_and_document_the_defaults() -> None:
    settings = load_settings(HERE / "cortex.example.toml")
    assert settings.model_dump() == CortexSettings().model_dump()
    assert load_catalogue(HERE / "models.example.toml").models == []


def test_the_commented_catalogue_entry_is_valid(tmp_path: Path) -> None:
    """Every key models.example.toml documents parses, so the example cannot drift."""
    lines = (HERE / "models.example.toml").read_text().splitlines()
    start = lines.index("# [[models]]")
    entry = [line[2:].split("  #")[0] for line in lines[start:] if not line.startswith("#   ")]
    (tmp_path / "models.toml").write_text("\n".join(entry) + "\n")
    settings = CortexSettings(neurons=[{"name": "gpu-1", "endpoint": "http://x:13131"}])
    [model] = load_catalogue(tmp_path / "models.toml", settings).models
    assert (model.pinned_on, model.priority, model.idle_ttl) == (["gpu-1"], 0, 1800)
    assert model.spec()["source"] == "/models/Qwen3-8B"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cortex.toml"
    path.write_text('[gateway]\nlisten = "0.0.0.0:1"\n')
    monkeypatch.setenv("CORTEX_GATEWAY__LISTEN", "127.0.0.1:8080")
    monkeypatch.setenv("CORTEX_POLL__DOWN_AFTER", "7")
    settings = load_settings(path)
    assert settings.gateway.listen == "127.0.0.1:8080"
    assert settings.poll.down_after == 7


def test_a_missing_catalogue_is_empty(tmp_path: Path) -> None:
    assert load_catalogue(tmp_path / "nope.toml").models == []


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("cortex.toml", "[gateway\n", "not valid TOML"),
        ("cortex.toml", "[gatway]\n", "gatway: unknown key"),
        (
            "cortex.toml",
            '[gateway]\nlisten = "31313"\n',
            "gateway.listen: Value error, expected HOST:PORT",
        ),
        (
            "cortex.toml",
            "[poll]\ninterval = 'often'\n",
            "poll.interval: Input should be a valid number",
        ),
        ("cortex.toml", "[[neurons]]\nname = 'a'\n", "neurons.0.endpoint: Field required"),
        (
            "cortex.toml",
            "[[neurons]]\nname='a'\nendpoint='http://x'\n[[neurons]]\nname='a'\nendpoint='http://y'\n",
            "neurons: Value error, neuron names must be unique; repeated: ['a']",
        ),
        ("models.toml", "[[models]]\nid = 'x'\ncolour = 1\n", "models.0.colour: unknown key"),
        ("models.toml", "[[models]]\nid = 'x'\n[[models]]\nid = 'x'\n", "ids must be unique"),
        (
            "models.toml",
            "[[models]]\nid = 'x'\npinned_on = ['gpu-9']\n",
            "models.0.pinned_on: ['gpu-9'] are not configured neurons (configured: [])",
        ),
        ("models.toml", "[[models]]\nid = 'x'\nidle_ttl = -1\n", "models.0.idle_ttl: Input should"),
        (
            "cortex.toml",
            "[gateway]\nresolve_every = -1\n",
            "gateway.resolve_every: Input should be greater than or equal to 0",
        ),
        (
            "cortex.toml",
            "[loading]\ncold_start_timeout = 0\n",
            "loading.cold_start_timeout: Input should be greater than 0",
        ),
    ],
)
def test_a_broken_file_is_one_message_and_exit_2(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    config = tmp_path / "cortex.toml"
    models = tmp_path / "models.toml"
    config.write_text(f'models_config = "{models}"\n')
    (tmp_path / name).write_text(
        text if name == "models.toml" else f'models_config = "{models}"\n' + text
    )
    done = cortex_cli("serve", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"cortex: invalid configuration: {tmp_path / name}: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    with pytest.raises(ConfigError):
        settings = load_settings(config)
        load_catalogue(settings.models_config, settings)


def test_status_against_nothing_is_a_clear_error() -> None:
    done = cortex_cli("status", "--endpoint", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.startswith("cortex status: cannot reach cortex at http://127.0.0.1:9/fleet")


def test_a_port_in_use_is_one_message_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "cortex.toml"
        config.write_text(
            f'models_config = "{tmp_path / "models.toml"}"\n'
            f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:0"\n'
        )
        done = cortex_cli("serve", "--config", str(config))
    assert done.returncode == 1, done.stderr
    assert done.stderr.endswith(
        f"cortex: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    ), done.stderr
