"""The neuron's catalogue of vLLM flags agrees with vLLM's own parser (the installed vLLM).

``neuron/tests/test_engine_arg_smuggling.py`` shows the policy refuses what vLLM's parser
would turn into options nobody allowed; this shows those parser behaviours are real, and that
every catalogued flag exists in vLLM with the kind (switch or value) the catalogue gives it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from neuron.engine.policy import CATALOGUE, NEVER_ALLOWED

VLLM = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser
parser = make_arg_parser(FlexibleArgumentParser())
kinds = {o: a.nargs == 0 for a in parser._actions for o in a.option_strings}
ns = parser.parse_args(["m", "--seed", "-sc.model", "--seed", "5"])
print(json.dumps({"switch": kinds, "speculative": ns.speculative_config}))
"""


def test_the_catalogue_agrees_with_vllms_parser() -> None:
    """Against the real parser (vLLM 0.32, where installed): every catalogued flag exists
    with the kind the catalogue gives it, and the `-X.key` smuggling is real."""
    done = subprocess.run(
        [sys.executable, "-c", VLLM], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["speculative"] == {"model": "--seed"}  # what the first case above stops
    for flag, kind in CATALOGUE.items():
        assert flag in found["switch"], flag
        assert found["switch"][flag] == (kind == "switch"), flag
    for flag in NEVER_ALLOWED - {"-O"}:  # -O is rewritten by parse_args, not an option
        assert flag in found["switch"], flag
