#!/usr/bin/env bash
# The fast tests of cortex and of neuron (or of the packages named: `test-lowest.sh neuron`),
# each on the lowest release of every dependency its pyproject.toml accepts (each `>=` bound
# turned into `==`), in .venv-lowest/<package>. The RPMs take the distribution's packages,
# which are often older than PyPI's newest, so the lower bounds must stay true.
# Extra arguments after `--` go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
packages=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do packages+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#packages[@]} -gt 0 ] || packages=(cortex neuron)

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
for package in "${packages[@]}"; do
  venv=.venv-lowest/$package
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  "$python" - "$package/pyproject.toml" "$constraints" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
lines = []
for dep in deps:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9a-z.]*)", dep.replace(" ", ""))
    if match is None:
        sys.exit(f"test-lowest: cannot read a lower bound from {dep!r} in {sys.argv[1]}")
    lines.append(f"{match[1]}=={match[2]}")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
  [ -x "$venv/bin/python" ] || { mkdir -p .venv-lowest; "$python" -m venv "$venv"; }
  stamp="$venv/.stamp-$(cat "$constraints" | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "test-lowest: installing $package on $(paste -sd' ' "$constraints")"
    "${pip[@]}" install -q -c "$constraints" --config-settings editable_mode=compat \
      -e "./$package" pytest pytest-asyncio pytest-timeout respx uvloop httpx \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    rm -f "$venv"/.stamp-*
    touch "$stamp"
  fi
  echo "test-lowest: $package/tests"
  "$venv/bin/python" -m pytest "$package/tests" -p no:cacheprovider "$@"
done
