#!/usr/bin/env bash
# Profile cortex's hot path with py-spy while bench/sidebyside.py loads it.
#
# Usage: bench/profile_cortex.sh [OUT_DIR] [extra sidebyside.py flags, e.g. --seconds 20]
#
# Runs one round against cortex alone (no held streams), with py-spy attached to the cortex
# process during the throughput run and during the stream burst, then prints the hot frames.
# Writes OUT_DIR/cortex-r1-throughput.txt and OUT_DIR/cortex-r1-burst.txt: collapsed stacks,
# which https://www.speedscope.app and flamegraph.pl open as they are. py-spy comes from
# .venv (`.venv/bin/pip install py-spy` if missing) and needs ptrace rights over cortex
# (root, or kernel.yama.ptrace_scope = 0).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-var/profile}
shift || true
py=.venv/bin/python
[ -x .venv/bin/py-spy ] || { echo "py-spy missing: .venv/bin/pip install py-spy" >&2; exit 1; }
rm -f "$out"/cortex-r1-*.txt
"$py" bench/sidebyside.py --targets cortex --rounds 1 --held 0 --profile "$out" "$@"
for phase in throughput burst; do
    echo
    echo "## cortex, $phase"
    "$py" bench/pyspy_top.py "$out/cortex-r1-$phase.txt" --top 15
done
