#!/usr/bin/env bash
# `make run`: a neuron on 127.0.0.1:13131 serving the tiny demo model, and cortex in front
# of it on 127.0.0.1:31313 (metrics on 31314). Ctrl-C stops both cleanly: each drains,
# the neuron unloads its engine, both exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
neuron_port=${NEURON_DEMO_PORT:-13131}
api_port=${CORTEX_DEMO_PORT:-31313}
metrics_port=${CORTEX_DEMO_METRICS_PORT:-31314}
mkdir -p var/demo
cat > var/demo/neuron.toml <<TOML
# Written by scripts/run-demo.sh; see neuron/neuron.example.toml for every key.
host = "127.0.0.1"
port = $neuron_port
drain_timeout = 30
max_loaded_models = 1  # one engine at a time: asking for tiny-2 shows cortex evicting tiny

[harness.vllm]
python = "$root/.venv/bin/python"
startup_timeout = 600
env = { VLLM_CPU_KVCACHE_SPACE = "1", HF_HUB_OFFLINE = "1" }
allowed_paths = ["$root/var"]  # cortex loads tiny-2 from var/tiny-model on demand

[[default_models]]
model_id = "tiny"
source = "$root/var/tiny-model"
dtype = "float32"
max_model_len = 256
engine_args = ["--enforce-eager"]
TOML
cat > var/demo/cortex.toml <<TOML
# Written by scripts/run-demo.sh; see cortex/cortex.example.toml for every key.
models_config = "$root/var/demo/models.toml"

[gateway]
listen = "127.0.0.1:$api_port"
metrics_listen = "127.0.0.1:$metrics_port"
drain_timeout = 30

[[neurons]]
name = "local"
endpoint = "http://127.0.0.1:$neuron_port"
TOML
cat > var/demo/models.toml <<TOML
[[models]]
id = "tiny"
source = "$root/var/tiny-model"
dtype = "float32"
max_model_len = 256
engine_args = ["--enforce-eager"]

# The same weights under a second name: a request for it is loaded on demand.
[[models]]
id = "tiny-2"
source = "$root/var/tiny-model"
dtype = "float32"
max_model_len = 256
engine_args = ["--enforce-eager"]
TOML

cat <<TEXT

  neuron on http://127.0.0.1:$neuron_port, loading the demo model "tiny" (about a minute on a CPU);
  cortex in front of it on http://127.0.0.1:$api_port (Prometheus metrics on :$metrics_port).
  The model's output is noise (random weights); the path through vLLM is real.

  Watch it get ready:   .venv/bin/cortex status --endpoint http://127.0.0.1:$api_port
  Then ask it:          curl -s http://127.0.0.1:$api_port/v1/chat/completions \\
                          -H 'content-type: application/json' \\
                          -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
  Anthropic shape:      curl -s http://127.0.0.1:$api_port/v1/messages -H 'content-type: application/json' \\
                          -d '{"model":"tiny","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
  On demand:            the same curl with "model":"tiny-2": cortex evicts tiny (the neuron
                          holds one model) and loads tiny-2 while the request waits (~30 s)
  By hand:              .venv/bin/cortex load tiny --endpoint http://127.0.0.1:$api_port
  Metrics:              curl -s http://127.0.0.1:$metrics_port/metrics | grep ^cortex_
  Stop with Ctrl-C (both drain; the neuron unloads its engine; both exit 0).

TEXT
.venv/bin/neuron --config var/demo/neuron.toml &
neuron=$!
.venv/bin/cortex serve --config var/demo/cortex.toml &
cortex=$!
stop() { kill -INT "$cortex" "$neuron" 2>/dev/null || true; }
trap stop INT TERM
status=0
wait "$cortex" || status=$?
wait "$cortex" 2>/dev/null || true  # a trapped signal interrupts the first wait
wait "$neuron" || status=$?
wait "$neuron" 2>/dev/null || true
exit "$status"
