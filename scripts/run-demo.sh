#!/usr/bin/env bash
# `make run`: a neuron on 127.0.0.1:13131 serving the tiny demo model. Ctrl-C stops it
# cleanly (drain, unload the engine, exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p var/demo
cat > var/demo/neuron.toml <<TOML
# Written by scripts/run-demo.sh; see neuron/neuron.example.toml for every key.
host = "127.0.0.1"
port = ${NEURON_DEMO_PORT:-13131}
drain_timeout = 30

[harness.vllm]
python = "$root/.venv/bin/python"
startup_timeout = 600
env = { VLLM_CPU_KVCACHE_SPACE = "1" }

[[default_models]]
model_id = "tiny"
source = "$root/var/tiny-model"
dtype = "float32"
max_model_len = 256
engine_args = ["--enforce-eager"]
TOML

port=${NEURON_DEMO_PORT:-13131}
cat <<TEXT

  neuron on http://127.0.0.1:$port, loading the demo model "tiny" (about a minute on a CPU).
  Its output is noise (random weights); the path through vLLM is real.

  Watch it get ready:   curl -s localhost:$port/models
  Then ask it:          curl -s localhost:$port/v1/chat/completions \\
                          -H 'content-type: application/json' \\
                          -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
  Anthropic shape:      curl -s localhost:$port/v1/messages -H 'content-type: application/json' \\
                          -d '{"model":"tiny","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
  Stop with Ctrl-C (drains, unloads the engine, exits 0).

TEXT
exec .venv/bin/neuron --config var/demo/neuron.toml
