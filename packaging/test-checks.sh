#!/usr/bin/env bash
# packaging/test-checks.sh: each check of `make check-packaging` fed a broken input, which it
# must refuse for the right reason (its message), and the unbroken input, which it must take.
# Run by packaging/check.sh. Each case works on a copy of the files the static checks read
# (CHECK_ONLY=static packaging/check.sh in that copy), so this checkout is never changed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=packaging/checks.sh
. packaging/checks.sh
cases=0

copy() {  # DIR: the files the static checks read
  mkdir -p "$1"
  tar -cf - packaging cortex/pyproject.toml neuron/pyproject.toml cortex/src/cortex/__init__.py \
    neuron/src/neuron/__init__.py | tar -xf - -C "$1"
}
# refuses NAME MESSAGE COMMAND...: COMMAND must fail and print MESSAGE (an extended regex).
refuses() {
  local name=$1 message=$2 out
  shift 2
  if out=$("$@" 2>&1); then echo "$out" >&2; fail "$name: the check passed"; fi
  grep -qE -- "$message" <<< "$out" || { echo "$out" >&2; fail "$name: refused, but not with /$message/"; }
  echo "refused: $name"
  cases=$((cases + 1))
}
static() { (cd "$1" && CHECK_ONLY=static packaging/check.sh); }
# broken NAME MESSAGE FILE SED-SCRIPT: a copy with FILE edited by SED-SCRIPT must be refused.
broken() {
  local dir=$work/case$cases
  copy "$dir"
  sed -i -E "$4" "$dir/$3"
  cmp -s "$repo/$3" "$dir/$3" && fail "$1: the sed script did not change $3"
  refuses "$1" "$2" static "$dir"
  rm -rf "$dir"
}

copy "$work/good"
static "$work/good" > /dev/null || fail "the unbroken copy fails the static checks"
echo "taken: the unbroken copy"

# --- the one version ---
broken "neuron/pyproject.toml at 0.2.0" "neuron/pyproject.toml says '0.2.0'" \
  neuron/pyproject.toml 's/^version = ".*"/version = "0.2.0"/'
broken "cortex.spec Version 0.2.0" "packaging/cortex.spec Version: '0.2.0'" \
  packaging/cortex.spec 's/^Version: .*/Version:        0.2.0/'
broken "version.sh without its '-' rule for tags" "not for its '-'" \
  packaging/version.sh '/has a .-., which an RPM Version/d'
version=$(sed -nE 's/^version = "([^"]*)"$/\1/p' cortex/pyproject.toml)
dir=$work/hyphen
copy "$dir"
sed -i -E "s/^version = \".*\"/version = \"$version-rc1\"/" "$dir"/{cortex,neuron}/pyproject.toml
sed -i -E "s/^__version__ = \".*\"/__version__ = \"$version-rc1\"/" \
  "$dir/cortex/src/cortex/__init__.py" "$dir/neuron/src/neuron/__init__.py"
refuses "version $version-rc1 everywhere" "not a plain PEP 440" static "$dir"

# --- the units ---
broken "an ExecStart= typo" "/usr/bin/cortx is not executable" \
  packaging/systemd/cortex.service 's|^ExecStart=/usr/bin/cortex |ExecStart=/usr/bin/cortx |'
broken "an unknown key" "Unknown key 'Bogus'" \
  packaging/systemd/neuron.service 's/^\[Service\]$/[Service]\nBogus=1/'
broken "neuron.service without its SystemCallFilter=" "neuron.service: exposure [0-9.]+ is over its ceiling" \
  packaging/systemd/neuron.service '/^SystemCallFilter=/d'
broken "neuron.service without ProtectProc=" "neuron.service: exposure [0-9.]+ is over its ceiling" \
  packaging/systemd/neuron.service '/^ProtectProc=/d'
broken "cortex.service without PrivateDevices=" "cortex.service: exposure [0-9.]+ is over its ceiling" \
  packaging/systemd/cortex.service '/^PrivateDevices=/d'
broken "a unit with no ceiling" "no exposure ceiling" \
  packaging/checks.sh '/^  \[cortex.service\]=/d'

# --- rpm's Python dependency generator ---
mini() {  # NAME REQUIRES-DIST [RPMBUILD ARGS]: a noarch RPM holding one dist-info
  local name=$1 requires=$2
  shift 2
  mkdir -p "$work/$name"
  cat > "$work/$name/mini.spec" <<EOF
Name: mini
Version: 1.0
Release: 1
Summary: one dist-info
License: MIT
BuildArch: noarch
%description
One dist-info, for rpm's Python dependency generator.
%install
d=%{buildroot}/usr/lib/python3.11/site-packages/mini-1.0.dist-info
mkdir -p \$d
printf 'Metadata-Version: 2.1\nName: mini\nVersion: 1.0\n$requires' > \$d/METADATA
%files
/usr/lib/python3.11/site-packages/mini-1.0.dist-info
EOF
  rpmbuild -bb --define "_topdir $work/$name" "$@" "$work/$name/mini.spec" > "$work/$name/build.log" 2>&1
}
mini good 'Requires-Dist: starlette>=0.37\n'
(generated_requires good "$work/good/build.log" "$work"/good/RPMS/noarch/mini-*.rpm > /dev/null) \
  || fail "generated_requires refused a good RPM"
echo "taken: an RPM whose generator ran"
# The generator under an interpreter without `packaging`: rpmbuild still succeeds.
python3 -m venv --without-pip "$work/no-packaging"
mini broken 'Requires-Dist: starlette>=0.37\n' \
  --define "__pythondist_requires $work/no-packaging/bin/python /usr/lib/rpm/pythondistdeps.py --requires"
refuses "rpm's Python dependency generator failing" "dependency generator failed" \
  generated_requires broken "$work/broken/build.log" "$work"/broken/RPMS/noarch/mini-*.rpm
mini none ''
refuses "an RPM without generated Python Requires" "no generated python3dist" \
  generated_requires none "$work/none/build.log" "$work"/none/RPMS/noarch/mini-*.rpm

# --- .ci/tools.sh: the packaging guard, and what it installs ---
# From this repository's root, `import packaging` finds its packaging/ folder (a namespace
# package), so the old guard passed without python3-packaging; tools.sh imports
# packaging.requirements from /.
(cd "$repo" && "$work/no-packaging/bin/python" -c "import packaging") \
  || fail "expected the repository's packaging/ folder to pass for the module from here"
out=$(SYSTEM_PYTHON="$work/no-packaging/bin/python" .ci/tools.sh --dry-run)
grep -qx "tools: apt-get install python3-packaging" <<< "$out" \
  || { echo "$out" >&2; fail "tools.sh took a Python without packaging, from the repository's root"; }
echo "refused: the generator's Python without packaging, from the repository's root"
cases=$((cases + 1))
# A PATH with only what tools.sh itself uses, and a stand-in apt-get that logs its arguments
# and installs what ./installs names (nothing, here).
mkdir -p "$work/bin"
for cmd in bash env cat cut sort paste sed id dirname tee chmod rm; do ln -s "$(command -v "$cmd")" "$work/bin/$cmd"; done
cat > "$work/bin/apt-get" <<EOF
#!/bin/bash
echo "apt-get \$*" >> "$work/apt.log"
if [ "\$1" = install ] && [ -x "$work/policy-rc.d" ]; then echo "policy-rc.d: \$("$work/policy-rc.d"; echo \$?)" >> "$work/apt.log"; fi
if [ "\$1" = install ]; then for cmd in \$(cat "$work/installs" 2> /dev/null); do $(command -v ln) -sf /bin/true "$work/bin/\$cmd"; done; fi
EOF
chmod +x "$work/bin/apt-get"
tools() { (cd "$repo" && PATH=$work/bin SYSTEM_PYTHON=/usr/bin/python3 POLICY_RC_D=$work/policy-rc.d .ci/tools.sh "$@"); }
out=$(tools --dry-run)
grep -qx "tools: apt-get install cpio curl firewalld haproxy iproute2 nodejs prometheus rpm rpmlint shellcheck systemd util-linux" <<< "$out" \
  || { echo "$out" >&2; fail "tools.sh --dry-run with no tools: not one package per missing command"; }
[ ! -e "$work/apt.log" ] || fail "tools.sh --dry-run ran apt-get"
echo "taken: --dry-run names one Debian package per missing command, and runs nothing"
refuses "apt-get installing nothing" "still missing after apt-get install: rpmbuild, rpmspec" tools
head -1 "$work/apt.log" | grep -qx "apt-get update -qq" || fail "tools.sh did not run apt-get update first"
grep -qx "policy-rc.d: 101" "$work/apt.log" || fail "tools.sh installed with no policy-rc.d refusing service starts"
[ ! -e "$work/policy-rc.d" ] || fail "tools.sh left its policy-rc.d behind"
echo "taken: apt-get update ran first; the policy-rc.d that kept services from starting is gone"
# node present (nodesource's), npm absent: nothing about npm is installed, and no nodejs.
ln -s "$(command -v node)" "$work/bin/node"
echo "rpmbuild rpmspec rpm2cpio rpmlint systemd-analyze systemd-sysusers firewall-offline-cmd cpio curl shellcheck unshare ip promtool haproxy" > "$work/installs"
: > "$work/apt.log"
out=$(tools) || { echo "$out" >&2; fail "tools.sh with a working apt-get"; }
grep -q "npm\|nodejs" "$work/apt.log" && { cat "$work/apt.log" >&2; fail "tools.sh installed npm or nodejs beside a node"; }
grep -qx "tools: all present" <<< "$out" || fail "tools.sh did not find the tools it installed"
echo "taken: with node present, tools.sh installs neither npm nor nodejs, and finds what apt-get installed"
# --- the workflows' jobs, run here (check-workflows.sh) ---
mkdir -p "$work/wf/.github"
cp -r .github/workflows "$work/wf/.github/"
if [ -f "${RPM_SHIM:-../shared/rpm-shim}/macros.shim" ]; then
  sed -i "s/'dnf5-command(builddep)'/'dnf-command(builddep)'/" "$work/wf/.github/workflows/rpm.yml"
  mkdir -p "$work/wf-build"
  refuses "rpm.yml installing dnf4's builddep command on Fedora 43" 'Unknown argument "builddep"' \
    env WORKFLOWS="$work/wf/.github/workflows" packaging/check-workflows.sh "$work/wf-build" build
else
  echo "not run (no rpm shim, as in check.sh): rpm.yml's build job with dnf4's builddep command"
fi
# The removal step gone: a publish that hangs until its timeout leaves both builds in COPR.
"$repo/.venv/bin/python" - "$work/wf/.github/workflows/release.yml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text, n = re.subn(r"      - name: remove what was submitted.*\Z", "", text, flags=re.S)
assert n == 1
open(path, "w").write(text)
PY
for name in cortex helexa-neuron; do
  mkdir -p "$work/wf-publish/workflows/artifacts/rpm-$name/SRPMS"
  packaging/srpm.sh "$name" "$work/srpms" > /dev/null
  cp "$work"/srpms/SRPMS/"$name"-[0-9]*.src.rpm "$work/wf-publish/workflows/artifacts/rpm-$name/SRPMS/"
done
refuses "release.yml without its removal step" "publish \(watch-hangs\): not both builds removed" \
  env WORKFLOWS="$work/wf/.github/workflows" packaging/check-workflows.sh "$work/wf-publish" publish
echo "test-checks: $cases broken inputs refused"
