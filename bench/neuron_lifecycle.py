"""Engine start time and SIGTERM-to-exit time of a real neuron with real vLLM engines.

Usage: .venv/bin/python bench/neuron_lifecycle.py [--models N] [--runs R] [--model-dir DIR]

Starts `neuron` with N copies of the tiny model as default models (ids tiny-0 .. tiny-N-1),
waits until /health says ready, then sends SIGTERM and times the exit. For each run it
prints one line of JSON:

  {"models": N, "ready_s": ..., "per_model_s": [...], "sigterm_to_exit_s": ..., "rc": 0,
   "engines_left": 0}

per_model_s comes from the neuron's own "default model X ready in Ys" log lines (engine
process start to a healthy /health); ready_s is process start to /health "ready".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = re.compile(r"default model (\S+) ready in ([\d.]+)s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_once(models: int, model_dir: Path, work: Path) -> dict[str, object]:
    port = free_port()
    config = work / "neuron.toml"
    entries = "".join(
        f'[[default_models]]\nmodel_id = "tiny-{i}"\nsource = "{model_dir}"\n'
        'dtype = "float32"\nmax_model_len = 256\nengine_args = ["--enforce-eager"]\n'
        for i in range(models)
    )
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\n[harness.vllm]\nstartup_timeout = 600\n'
        'env = { VLLM_CPU_KVCACHE_SPACE = "1", HF_HUB_OFFLINE = "1" }\n' + entries
    )
    log_path = work / "neuron.log"
    began = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("neuron")), "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=10) as client:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"neuron exited early:\n{log_path.read_text()}")
            try:
                if client.get(f"{url}/health").json()["status"] == "ready":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        ready_s = time.monotonic() - began
        pgids = [m["engine"]["pid"] for m in client.get(f"{url}/models").json()]
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=180)
    exit_s = time.monotonic() - signalled
    per_model = [float(s) for _, s in READY_LINE.findall(log_path.read_text())]
    return {
        "models": models,
        "ready_s": round(ready_s, 1),
        "per_model_s": per_model,
        "sigterm_to_exit_s": round(exit_s, 2),
        "rc": rc,
        "engines_left": sum(group_alive(p) for p in pgids),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "tiny-model")
    args = parser.parse_args()
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(args.model_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as work:
            sys.stdout.write(json.dumps(run_once(args.models, args.model_dir, Path(work))) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
