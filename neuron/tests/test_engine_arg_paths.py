"""A neuron token cannot make an engine read a file outside ``allowed_paths``.

Every ``engine_args`` item is checked: a flag that names a file (either ``--flag=value`` or
``--flag value``) must point inside ``allowed_paths`` (symlinks followed), and a loose item
that is not the value of the flag before it is refused (vLLM would take it as the model).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from neuron_testing import fake_harness, running, settings_for

from neuron.settings import ConfigError, Harnesses, NeuronSettings, load_settings

ALLOWED = [
    "--enforce-eager",
    "--seed",
    "--chat-template",
    "--generation-config",
    "--tokenizer",
    "--ssl-keyfile",
]


def settings(root: Path) -> NeuronSettings:
    harness = fake_harness().model_copy(
        update={"allowed_paths": [str(root)], "allowed_engine_args": ALLOWED}
    )
    return settings_for(harness=Harnesses(vllm=harness))


@pytest.mark.parametrize(
    "engine_args",
    [
        ["--chat-template=/etc/passwd"],
        ["--chat-template", "/etc/passwd"],
        ["--generation-config=/root"],
        ["--generation-config", "/etc"],
        ["--tokenizer=/etc"],
        ["--tool-parser-plugin=/tmp/evil.py"],
        ["--ssl-keyfile", "/etc/ssl/private/key.pem"],
        ["--chat-template=../../../../../../etc/passwd"],
        ["--chat-template=LINK/passwd"],  # a symlink inside the allowed folder leading out
        ["--chat-template=ALLOWED/token"],  # the hub token, at the top of the HF cache
        ["--chat-template=ALLOWED/.ssh/id_rsa"],
        ["--enforce-eager", "/etc/passwd"],  # loose: vLLM's positional model_tag
        ["/etc"],
        ["--seed", "1", "/etc/passwd"],
        ["--chat-template"],  # no value: vLLM would fail, the neuron says why first
    ],
)
async def test_file_reading_args_outside_allowed_paths_are_400(
    tmp_path: Path, engine_args: list[str]
) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "LINK").symlink_to("/etc")
    (tmp_path / "allowed" / "token").write_text("hf_secret")
    args = [
        a.replace("LINK", str(tmp_path / "allowed" / "LINK")).replace(
            "ALLOWED", str(tmp_path / "allowed")
        )
        for a in engine_args
    ]
    async with running(settings(tmp_path / "allowed")) as neuron:
        response = await neuron.load("m", engine_args=args)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "engine_args"
        assert await neuron.models() == {}
        assert (await neuron.client.get("/health")).status_code == 200


async def test_paths_inside_allowed_paths_and_plain_values_pass(tmp_path: Path) -> None:
    root = tmp_path / "allowed"
    (root / "gen").mkdir(parents=True)
    (root / "chat.jinja").write_text("{{ messages }}")
    async with running(settings(root)) as neuron:
        response = await neuron.load(
            "m",
            engine_args=[
                f"--chat-template={root / 'chat.jinja'}",
                "--generation-config",
                str(root / "gen"),
                "--seed",
                "7",
                "--enforce-eager",
            ],
        )
        assert response.status_code == 200, response.text
        inline = await neuron.load("m2", engine_args=["--chat-template={{ messages }}"])
        assert inline.status_code == 200, inline.text
        keyword = await neuron.load("m3", engine_args=["--generation-config=vllm"])
        assert keyword.status_code == 200, keyword.text


@pytest.mark.parametrize("flag", ["--config", "--lora-modules", "--model", "--download-dir"])
def test_flags_that_cannot_be_checked_cannot_be_allowed(tmp_path: Path, flag: str) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(f'[harness.vllm]\nallowed_engine_args = ["--seed", "{flag}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "harness.vllm.allowed_engine_args" in str(caught.value)
    assert flag in str(caught.value)
