"""Every field of a model spec that reaches the engine's argv is checked, wherever it comes from.

``model_id`` follows ``--served-model-name``, ``quant`` and ``dtype`` follow their flags, and
``source`` follows ``--model``: vLLM's parser takes an item starting with ``-`` for a flag,
and one with a ``.`` for a key of a JSON option that swallows the next item (``--host``
among them). ``tests/e2e/test_e2e_engine_args.py`` runs vLLM's own parser over what passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from neuron_testing import running, settings_for
from pydantic import ValidationError

from neuron.engine.policy import LaunchPolicy
from neuron.errors import BadRequest
from neuron.settings import ConfigError, ModelSpec, VllmHarness, load_settings

HOSTILE_IDS = [
    "--additional-config.x",  # swallowed --host 127.0.0.1: the engine listened on 0.0.0.0
    "-sc.model",
    "--hf-overrides.architectures",
    "-cc.mode",
    "--host",
    "-1.5",
    "m\nFAKE LOG LINE",
    "m\r",
    "m x",
    "/abs",
    ".hidden",
    "m\u2028x",
]
HOSTILE_WORDS = ["--additional-config.x", "-cc.mode", "fp8 --host", "fp8\n", "a.b", "x" * 65]


@pytest.mark.parametrize("model_id", HOSTILE_IDS)
def test_hostile_model_ids_are_refused(model_id: str) -> None:
    with pytest.raises(ValidationError, match="model_id"):
        ModelSpec(model_id=model_id)


@pytest.mark.parametrize("field", ["quant", "dtype"])
@pytest.mark.parametrize("value", HOSTILE_WORDS)
def test_hostile_quant_and_dtype_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelSpec.model_validate({"model_id": "m", field: value})


@pytest.mark.parametrize("source", ["-sc.model", "--additional-config.x", "/models/m\n", ""])
def test_hostile_sources_are_refused(source: str) -> None:
    with pytest.raises(ValidationError, match="source"):
        ModelSpec(model_id="m", source=source)


def test_engine_args_items_with_control_characters_are_refused() -> None:
    with pytest.raises(ValidationError, match="engine_args"):
        ModelSpec(model_id="m", engine_args=["--seed=1\n--host=0.0.0.0"])


@pytest.mark.parametrize(
    "model_id",
    ["Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct", "llama3:8b", "org/m_v2.5", "tiny"],
)
def test_model_ids_keep_what_hub_ids_use(model_id: str) -> None:
    spec = ModelSpec(model_id=model_id, quant="awq_marlin", dtype="bfloat16")
    assert spec.model_id == model_id


def test_a_negative_decimal_must_be_one_item_with_its_flag(tmp_path: Path) -> None:
    """``--seed -1.5``: vLLM reads ``-1.5`` as the dotted option ``-1`` taking the next item."""
    policy = LaunchPolicy(
        allowed_engine_args=["--seed", "--enforce-eager"],
        allowed_paths=[str(tmp_path)],
        allowed_sources=["*"],
    )
    with pytest.raises(BadRequest, match=r"write --seed=-1\.5 as one item"):
        policy.check_engine_args(["--seed", "-1.5", "--enforce-eager"])
    with pytest.raises(BadRequest, match="as one item"):
        policy.check_engine_args(["--seed", "-.5"])
    policy.check_engine_args(["--seed=-1.5", "--seed", "-1", "--enforce-eager"])


async def test_a_hostile_load_is_400_and_starts_nothing() -> None:
    async with running(settings_for()) as neuron:
        for body, param in [
            ({"model_id": "--additional-config.x"}, "model_id"),
            ({"model_id": "m", "quant": "-cc.mode"}, "quant"),
            ({"model_id": "m", "dtype": "float32\n"}, "dtype"),
            ({"model_id": "m", "engine_args": ["--seed", "-1.5", "--enforce-eager"]}, None),
        ]:
            response = await neuron.client.post("/models/load", json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == (param or "engine_args")
            assert "\n" not in error["message"].split(": ", 1)[0]
        assert await neuron.models() == {}
        assert (await neuron.client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ('model_id = "--additional-config.x"', "default_models.0.model_id"),
        ('model_id = "m"\nquant = "-cc.mode"', "default_models.0.quant"),
        ('model_id = "m"\ndtype = "a b"', "default_models.0.dtype"),
        ('model_id = "m"\nsource = "-sc.model"', "default_models.0.source"),
        ('model_id = "m"\nengine_args = ["--seed=1\\n"]', "default_models.0.engine_args"),
    ],
)
def test_a_hostile_default_model_is_a_config_error(tmp_path: Path, entry: str, key: str) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(f"[[default_models]]\n{entry}\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path)


@pytest.mark.parametrize("hf_cache", ["-cc.x", "relative/cache", "/srv/hf\n"])
def test_the_hf_cache_must_be_an_absolute_path(hf_cache: str) -> None:
    with pytest.raises(ValidationError, match="hf_cache"):
        VllmHarness(hf_cache=hf_cache)
