#!/usr/bin/env bash
# cortex's fast tests on the lowest release of every dependency cortex/pyproject.toml accepts
# (each `>=` bound turned into `==`), in .venv-lowest. The RPM takes the distribution's
# packages, which are often older than PyPI's newest, so the lower bounds must stay true.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-lowest
python=${PYTHON:-python3}
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$python" - "$constraints" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("cortex/pyproject.toml", "rb"))["project"]["dependencies"]
lines = []
for dep in deps:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9a-z.]*)", dep.replace(" ", ""))
    if match is None:
        sys.exit(f"test-lowest: cannot read a lower bound from {dep!r}")
    lines.append(f"{match[1]}=={match[2]}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.stamp-$(cat "$constraints" requirements-dev.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "test-lowest: installing cortex on $(paste -sd' ' "$constraints")"
  "${pip[@]}" install -q -c "$constraints" --config-settings editable_mode=compat -e ./cortex \
    pytest pytest-asyncio pytest-timeout respx uvloop httpx \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f "$venv"/.stamp-*
  touch "$stamp"
fi
"$venv/bin/python" -m pytest cortex/tests -p no:cacheprovider "$@"
