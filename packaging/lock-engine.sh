#!/usr/bin/env bash
# Regenerate packaging/engine-requirements.txt: vLLM (CUDA build, as pinned in
# requirements-engine-cuda.txt) and everything it needs, pinned with every file's hash,
# resolved for CPython 3.11 on Linux x86_64 against PyPI alone (local wheel folders and
# pip config are ignored, so a CPU torch found on this machine cannot slip in).
# Takes a few minutes; needs pip-tools (pip install pip-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
out=packaging/engine-requirements.txt
{
  echo "# The vLLM engine for helexa-neuron (CUDA), hash-locked; built into /var/lib/neuron/engine"
  echo "# by /usr/libexec/helexa-neuron/engine-setup. Resolved for CPython 3.11 on Linux x86_64."
  echo "# Regenerate with packaging/lock-engine.sh; never edit by hand."
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    pip-compile --quiet --generate-hashes --allow-unsafe --no-emit-index-url \
    --no-emit-find-links --no-header --strip-extras --output-file - requirements-engine-cuda.txt
} > "$out.new"
mv "$out.new" "$out"
