"""vLLM's own parser cannot be used to slip past the engine-argument policy.

vLLM 0.32's ``FlexibleArgumentParser`` rewrites ``-X.key value`` / ``--X.key=value`` into a
JSON config argument, reads a bare ``--config`` anywhere in argv, turns ``_`` into ``-`` in
flag names, and argparse takes an unambiguous prefix of a flag for the flag. Each of these
would let a request set options the allow-list never named; each is refused here, and the
allow-list itself may only name exact, vetted flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron.engine.policy import LaunchPolicy
from neuron.errors import BadRequest
from neuron.settings import ConfigError, load_settings

ALLOWED = ["--seed", "--max-num-seqs", "--enforce-eager", "--chat-template", "--tokenizer"]


def policy(root: Path, allowed: list[str] = ALLOWED) -> LaunchPolicy:
    return LaunchPolicy(
        allowed_engine_args=allowed, allowed_paths=[str(root)], allowed_sources=["*"]
    )


@pytest.mark.parametrize(
    "engine_args",
    [
        ["--seed", "-sc.model", "--seed", "5"],  # speculative_config={"model": "--seed"}
        ["--seed", "--compilation-config.debug_dump_path", "--max-num-seqs", "8"],
        ["--seed", "--config"],
        ["--enforce-eager", "--config", "x.yaml"],
        ["--seed", "--config=x.yaml"],
        ["--max-num-seqs.x=1"],
        ["-O.debug_dump_path=/tmp/x"],
        ["--seed", "-5x"],
        ["--seed", "--enforce-eager"],
        ["--chat_template=/etc/passwd"],  # "_" is "-" to vLLM
        ["--chat-templ=/etc/passwd"],  # a prefix is the flag to argparse
        ["--max-num", "8"],
        ["--tool-parser-plugin=/x.py"],
    ],
)
def test_smuggled_options_are_refused(tmp_path: Path, engine_args: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        policy(tmp_path).check_engine_args(engine_args)
    assert caught.value.param == "engine_args"


def test_negative_numbers_and_underscored_flags_still_pass(tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    policy(tmp_path).check_engine_args(
        ["--seed", "-1", "--max_num_seqs", "8", f"--chat_template={template}", "--seed=-2"]
    )


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("--speculative-conf", "not a vLLM flag"),  # a prefix of --speculative-config
        ("--chat_templ", "not a vLLM flag"),
        ("--tool-parser-plugin", "can never be allowed"),
        ("--worker_extension_cls", "can never be allowed"),
        ("--compilation-config", "can never be allowed"),
        ("-O", "can never be allowed"),
        ("--logits-processors", "can never be allowed"),
        ("--hf-token", "can never be allowed"),
        ("--middleware", "can never be allowed"),
        ("--no-such-flag", "not a vLLM flag"),
    ],
)
def test_the_allow_list_names_only_vetted_flags(tmp_path: Path, entry: str, why: str) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(f'[harness.vllm]\nallowed_engine_args = ["--seed", "{entry}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "harness.vllm.allowed_engine_args" in str(caught.value)
    assert why in str(caught.value)


def test_underscored_allow_list_entries_mean_the_dashed_flag(tmp_path: Path) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text('[harness.vllm]\nallowed_engine_args = ["--max_num_seqs"]\n')
    assert load_settings(path).harness.vllm.allowed_engine_args == ["--max-num-seqs"]
