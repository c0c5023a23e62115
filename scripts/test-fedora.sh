#!/usr/bin/env bash
# The fast tests of cortex and of neuron (not e2e, not chaos) on the versions of their Python
# dependencies that Fedora 43 ships (packaging/fedora43-constraints.txt), which is what the RPMs
# run on. One venv per Python, .venv-fedora/<python version>: PYTHON picks the interpreter
# (Fedora 43's is 3.14; GitHub's ci.yml runs this on 3.14). No uvloop: Fedora 43 has no build of it.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
constraints=packaging/fedora43-constraints.txt
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=.venv-fedora/$version
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

[ -x "$venv/bin/python" ] || { mkdir -p .venv-fedora; "$python" -m venv "$venv"; }
stamp="$venv/.stamp-$(cat "$constraints" cortex/pyproject.toml neuron/pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "test-fedora: installing cortex and neuron on Python $version with $constraints"
  "${pip[@]}" install -q -c "$constraints" --config-settings editable_mode=compat \
    -e ./cortex -e ./neuron pytest pytest-asyncio pytest-timeout respx httpx \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f "$venv"/.stamp-*
  touch "$stamp"
fi
# The pins must really be what is installed (a constraint pip could not honour fails the install,
# but a dependency missing from the venv would make the pin meaningless).
"$venv/bin/python" - "$constraints" <<'PY'
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        if version(name) != want:
            sys.exit(f"test-fedora: {name} is {version(name)}, {sys.argv[1]} says {want}")
PY
echo "test-fedora: Python $version, $(grep -v '^#' "$constraints" | paste -sd' ')"
"$venv/bin/python" -m pytest cortex/tests neuron/tests -p no:cacheprovider "$@"
