"""``[auth]`` keys: named, with roles, their secrets in the TOML, a file or a CORTEX_ variable."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cortex_testing import free_port

from cortex.auth import Keyring
from cortex.settings import ConfigError, load_settings

REPO = Path(__file__).parents[2]
README = REPO / "README.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cortex.toml"
    path.write_text(text)
    return path


def test_secrets_come_from_the_file_a_key_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ops.key").write_text("sk-from-file\n")
    monkeypatch.setenv("CORTEX_KEY_TEAM_B", "sk-from-env")
    path = write(
        tmp_path,
        f"""
[auth]
api_keys = ["sk-plain"]
[[auth.keys]]
name = "team-a"
key = "sk-inline"
models = ["m1"]
[[auth.keys]]
name = "ops"
key_file = "{tmp_path / "ops.key"}"
role = "admin"
[[auth.keys]]
name = "team-b"
key_env = "CORTEX_KEY_TEAM_B"
""",
    )
    keyring = Keyring(load_settings(path).auth)
    found = {k: keyring.identify(k.encode()) for k in ("sk-plain", "sk-inline", "sk-from-file")}
    assert {k: (c.name, c.admin) for k, c in found.items() if c} == {
        "sk-plain": ("api_keys[0]", False),
        "sk-inline": ("team-a", False),
        "sk-from-file": ("ops", True),
    }
    team_b = keyring.identify(b"sk-from-env")
    assert team_b is not None and team_b.name == "team-b" and not team_b.admin
    assert keyring.identify(b"sk-nope") is None
    assert keyring.identify(b"ops") is None, "a name is not a key"


def test_keys_can_come_whole_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [{"name": "ops", "key": "sk-env-admin", "role": "admin"}]
    monkeypatch.setenv("CORTEX_AUTH__KEYS", json.dumps(keys))
    found = Keyring(load_settings(None).auth).identify(b"sk-env-admin")
    assert found is not None and found.admin


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('name = "a"', "give exactly one of key, key_file, key_env (got none)"),
        ('name = "a"\nkey = "k"\nkey_env = "CORTEX_K"', "got ['key', 'key_env']"),
        ('name = "a"\nkey_file = "/nonexistent/key"', "key_file '/nonexistent/key' cannot be read"),
        ('name = "a"\nkey_env = "CORTEX_UNSET_FOR_TEST"', "$CORTEX_UNSET_FOR_TEST is not set"),
        ('name = "a"\nkey_env = "HOME"', "auth.keys.0.key_env"),  # only CORTEX_ variables
        ('name = "a"\nkey = "k"\nrole = "root"', "auth.keys.0.role"),
        ('name = "_anonymous"\nkey = "k"', "auth.keys.0.name"),
        ('name = "a b"\nkey = "k"', "auth.keys.0.name"),
        ('name = "a"\nkey = "k"\n[[auth.keys]]\nname = "a"\nkey = "j"', "repeated: ['a']"),
        ('name = "a"\nkey = "k"\n[[auth.keys]]\nname = "b"\nkey = "k"', "given twice"),
    ],
)
def test_bad_keys_are_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, fragment: str
) -> None:
    monkeypatch.delenv("CORTEX_UNSET_FOR_TEST", raising=False)
    path = write(tmp_path, f"[[auth.keys]]\n{toml}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: auth")
    assert fragment in str(caught.value)
    assert "sk-" not in str(caught.value)


@pytest.mark.parametrize("doc", [README, REPO / "docs" / "security.md"], ids=lambda p: p.name)
def test_the_documented_roles_example_works(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    (example,) = [b for b in blocks if "[[auth.keys]]" in b]
    monkeypatch.setenv("CORTEX_KEY_OPS", "sk-ops-secret")
    keyring = Keyring(load_settings(write(tmp_path, example)).auth)
    ops = keyring.identify(b"sk-ops-secret")
    assert ops is not None and ops.admin
    assert keyring.has_admin


def test_keys_without_an_admin_key_are_a_warning_at_start(tmp_path: Path) -> None:
    api, metrics = free_port(), free_port()
    config = write(
        tmp_path,
        f'models_config = "{tmp_path / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        '[auth]\napi_keys = ["sk-user"]\n',
    )
    cortex = str(Path(sys.executable).with_name("cortex"))
    proc = subprocess.Popen(
        [cortex, "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "no API key has role" in line or "listening on" in line:
                break
        assert "WARNING" in lines[-1] and "/fleet" in lines[-1], lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
