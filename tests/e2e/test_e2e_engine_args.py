"""The neuron's catalogue of vLLM flags agrees with vLLM's own parser (the installed vLLM), and
that parser reads from the argv the neuron builds only the options the neuron means to set.

``neuron/tests/test_engine_arg_smuggling.py`` shows the policy refuses what vLLM's parser
would turn into options nobody allowed; this shows those parser behaviours are real, and that
every catalogued flag exists in vLLM with the kind (switch or value) the catalogue gives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from neuron.engine.policy import CATALOGUE, NEVER_ALLOWED, LaunchPolicy
from neuron.engine.process import engine_argv
from neuron.errors import BadRequest
from neuron.settings import ModelSpec, VllmHarness

VLLM = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser
parser = make_arg_parser(FlexibleArgumentParser())
kinds = {o: a.nargs == 0 for a in parser._actions for o in a.option_strings}
ns = parser.parse_args(["m", "--seed", "-sc.model", "--seed", "5"])
parsed = []
for argv in json.loads(sys.stdin.read()):
    try:
        parsed.append(vars(make_arg_parser(FlexibleArgumentParser()).parse_args(argv)))
    except SystemExit:  # argparse's error: the engine would not start
        parsed.append(None)
found = {"switch": kinds, "speculative": ns.speculative_config, "parsed": parsed}
print(json.dumps(found, default=repr))
"""
PORT = 20000
SOURCE = "/var/lib/neuron/models/m"
ALLOWED = ["--seed", "--enforce-eager", "--max-num-seqs", "--cpu-offload-gb"]
OFFLOAD = {"cpu_offload_gb", "enforce_eager"}
HOSTILE: list[tuple[dict[str, Any], set[str]]] = [
    # (fields of a load request, the options those fields are meant to set)
    ({"model_id": "--additional-config.x"}, {"served_model_name"}),  # swallowed --host
    ({"model_id": "-sc.model"}, {"served_model_name"}),
    ({"model_id": "--hf-overrides.architectures"}, {"served_model_name"}),
    ({"model_id": "-cc.mode"}, {"served_model_name"}),
    ({"model_id": "--host"}, {"served_model_name"}),
    ({"quant": "--additional-config.x"}, {"quantization"}),
    ({"dtype": "-cc.mode"}, {"dtype"}),
    ({"source": "--hf-overrides.x"}, {"model"}),
    ({"engine_args": ["--cpu-offload-gb", "-1.5", "--enforce-eager"]}, OFFLOAD),  # -1.5 eats
    ({"engine_args": ["--seed", "-sc.model", "--seed", "5"]}, {"seed"}),
]
ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"model_id": "llama3:8b"}, {"served_model_name": ["llama3:8b"]}),
    ({"model_id": "org/m_v2.5-x"}, {"served_model_name": ["org/m_v2.5-x"]}),
    ({"quant": "fp8", "dtype": "float32"}, {"quantization": "fp8", "dtype": "float32"}),
    (
        {"engine_args": ["--cpu-offload-gb=-1.5", "--seed", "-1", "--enforce-eager"]},
        {"cpu_offload_gb": -1.5, "seed": -1, "enforce_eager": True},
    ),
    (
        {"engine_args": ["--max-num-seqs", "8", "--seed=-2"]},
        {"max_num_seqs": 8, "seed": -2},
    ),
]


def _argv(spec: ModelSpec) -> list[str]:
    harness = VllmHarness(hf_cache="/var/lib/neuron/hf")
    return engine_argv(spec, harness, PORT)[len(harness.argv_prefix) :]


def _checked(fields: dict[str, Any]) -> ModelSpec:
    """What the neuron does with a load request: validate the spec, then the policy."""
    spec = ModelSpec.model_validate({"model_id": "m", "source": SOURCE, **fields})
    policy = LaunchPolicy(
        allowed_engine_args=ALLOWED, allowed_paths=["/var/lib/neuron"], allowed_sources=["*"]
    )
    policy.check_engine_args(spec.engine_args)
    return spec


def _specs() -> list[ModelSpec]:
    """The baseline spec, then each hostile one unchecked, then each accepted one."""
    baseline = _checked({})
    unchecked = [
        ModelSpec.model_construct(**{**baseline.model_dump(), "engine_args": [], **fields})
        for fields, _ in HOSTILE
    ]
    return [baseline, *unchecked, *(_checked(fields) for fields, _ in ACCEPTED)]


@pytest.fixture(scope="module")
def vllm() -> dict[str, Any]:
    """vLLM's parser, asked once (importing vLLM takes seconds): the kind of each of its
    options (``switch``: True for a switch), what it makes of ``--seed -sc.model --seed 5``
    (``speculative``), and its reading of the argv the neuron builds for each spec of
    :func:`_specs` (``parsed``: None where it refused one)."""
    done = subprocess.run(
        [sys.executable, "-c", VLLM],
        input=json.dumps([_argv(spec) for spec in _specs()]),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_the_catalogue_agrees_with_vllms_parser(vllm: dict[str, Any]) -> None:
    """Against the real parser (vLLM 0.32, where installed): every catalogued flag exists
    with the kind the catalogue gives it, and the `-X.key` smuggling is real."""
    assert vllm["speculative"] == {"model": "--seed"}  # what --seed -sc.model smuggles
    for flag, kind in CATALOGUE.items():
        assert flag in vllm["switch"], flag
        assert vllm["switch"][flag] == (kind == "switch"), flag
    for flag in NEVER_ALLOWED - {"-O"}:  # -O is rewritten by parse_args, not an option
        assert flag in vllm["switch"], flag


def _changes(parsed: dict[str, Any] | None, baseline: dict[str, Any]) -> dict[str, Any]:
    assert parsed is not None, "vLLM's parser refused the argv"
    return {
        k: parsed.get(k)
        for k in parsed.keys() | baseline.keys()
        if parsed.get(k) != baseline.get(k)
    }


def test_vllms_parser_reads_only_the_intended_options_from_the_argv_the_neuron_builds(
    vllm: dict[str, Any],
) -> None:
    """Hostile model_id/quant/dtype/source/engine_args are refused before any argv is built,
    and unchecked they would really have changed the engine's options (the attacks are real);
    what the neuron accepts, however odd, changes nothing but the options it means to set.
    The host stays 127.0.0.1, the port and the model stay the neuron's."""
    for fields, _ in HOSTILE:
        with pytest.raises((ValidationError, BadRequest)):
            _checked(fields)
    baseline, *rest = vllm["parsed"]
    assert baseline is not None
    assert baseline["host"] == "127.0.0.1"
    assert baseline["port"] == PORT
    assert baseline["model"] == SOURCE
    assert baseline["served_model_name"] == ["m"]
    assert baseline["download_dir"] == "/var/lib/neuron/hf"
    assert baseline["disable_access_log_for_endpoints"] == "/health,/metrics"
    swallowed = rest[0]  # model_id "--additional-config.x", as the issue found it
    assert swallowed is not None
    assert swallowed["host"] is None  # vLLM's default: every address
    assert swallowed["additional_config"] == {"x": "--host"}
    for (fields, own), parsed in zip(HOSTILE, rest[: len(HOSTILE)], strict=True):
        # Unchecked, the parser either refused the argv or set options beyond the field's own.
        if parsed is not None:
            assert set(_changes(parsed, baseline)) - own, fields
    for (fields, intended), parsed in zip(ACCEPTED, rest[len(HOSTILE) :], strict=True):
        assert _changes(parsed, baseline) == intended, fields
