#!/usr/bin/env bash
# packaging/check-rpms.sh WORK: the binary RPMs, built and installed on a Debian machine.
# Called by packaging/check.sh after it has built both SRPMs into WORK/SRPMS (sources in
# WORK/SOURCES). Fedora's build macros are stood in for by the rpm shim (../shared/rpm-shim,
# or $RPM_SHIM); packaging/README.md says what that proves and what it does not.
#
# For each package: rpmbuild --rebuild of its SRPM; rpmlint on the binary RPM; no build paths
# in the payload and no unexpanded macro in a scriptlet; every Python import of the program is
# a Requires; user()/group() requires met by its own sysusers file; then, in a throw-away root
# of its own: users from the sysusers file (as rpm >= 4.19 does), `rpm --root -i` with the
# scriptlets running (stand-ins log what systemd-update-helper and firewall-cmd were asked),
# owners and modes, `rpm -V`, the installed program started with its packaged config until
# /health answers, an upgrade to Release 2 (config kept), and an erase.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$1
# As in a clean build root: nothing from the caller decides where Python looks or what it writes.
unset PYTHONPATH PYTHONDONTWRITEBYTECODE PYTHONHOME
shim=$(cd "${RPM_SHIM:-../shared/rpm-shim}" && pwd)
python=$PWD/.venv/bin/python  # the shim's build Python: setuptools >= 77, pip, packaging
sitelib=$(rpm --load "$shim/macros.shim" --eval '%python3_sitelib')  # where the shim installs
top=$work/rpms
mkdir -p "$top"
pid=""  # the program under test, stopped whatever happens
trap 'if [ -n "$pid" ]; then kill "$pid" 2> /dev/null || true; fi' EXIT

# shellcheck source=packaging/checks.sh
. packaging/checks.sh
rpm_root() { rpm --root "$root" "$@" 2> >(grep -v -e "use Alien instead" -e "assuming you know" >&2); }
macros() {  # SPEC: the shim's macros, and firewalld's only where the spec BuildRequires it
  echo --load "$shim/macros.shim" --load "$shim/macros.sysusers-f42" \
    --load "$PWD/packaging/shim-extra.macros"
  if grep -q '^BuildRequires: *firewalld-filesystem' "$1"; then echo --load "$shim/macros.firewalld"; fi
}
# shellcheck source=packaging/procs.sh
. packaging/procs.sh
ids() { awk -F: -v n="$2" '$1 == n { print $3 }' "$root/etc/$1"; }  # passwd|group NAME -> id
expect_mode() {  # PATH MODE USER GROUP (names as in the root's /etc/passwd and /etc/group)
  local uid=0 gid=0 got
  [ "$3" = root ] || uid=$(ids passwd "$3")
  [ "$4" = root ] || gid=$(ids group "$4")
  got=$(stat -c '%a %u %g' "$root$1")
  [ "$got" = "$2 $uid $gid" ] || fail "$1 is $got, want $2 $3($uid) $4($gid)"
  echo "  $1: $2 $3:$4"
}
expect_log() {  # LINE: a line the scriptlets' stand-ins logged
  grep -qxF "$1" "$root/scriptlets.log" || { cat "$root/scriptlets.log"; fail "scriptlets did not run: $1"; }
  echo "  scriptlet ran: $1"
}
new_root() {  # a root with /bin/sh and stand-ins for the two commands the scriptlets call
  root=$work/root-$1
  mkdir -p "$root"/{bin,etc,lib64,lib/x86_64-linux-gnu,usr/bin,usr/lib/systemd}
  cp /usr/bin/dash "$root/bin/sh"
  cp /lib/x86_64-linux-gnu/libc.so.6 "$root/lib/x86_64-linux-gnu/"
  cp /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
  for cmd in usr/bin/firewall-cmd usr/lib/systemd/systemd-update-helper; do
    printf '#!/bin/sh\necho "%s $*" >> /scriptlets.log\n' "${cmd##*/}" > "$root/$cmd"
    chmod 0755 "$root/$cmd"
  done
  rpm --root "$root" --initdb
}
install_rpm() {  # RPM: rpm -i (or -U) into $root; any warning or scriptlet failure fails
  local out
  out=$(rpm_root "$@" --nodeps 2>&1) || { echo "$out"; fail "rpm $* exited non-zero"; }
  if [ -n "$out" ]; then echo "$out"; fail "rpm $* printed warnings"; fi
}
deps_venv() {  # RPM VENV MODULE: a venv holding the RPM's python3dist() Requires, not MODULE
  local reqs
  reqs=$(rpm -qp --requires "$1" | sed -nE 's/^python3(\.[0-9]+)?dist\(([^)]+)\)( >= (.*))?$/\2>=\4/p' | sed 's/>=$//')
  "$python" -m venv "$2"
  # shellcheck disable=SC2086
  "$2/bin/python" -m pip install -q --disable-pip-version-check $reqs \
    2> >(grep -v "is ignored" >&2)
  # So the program that answers below can only be the one installed in the root.
  if (cd "$work" && "$2/bin/python" -sc "import $3" 2>/dev/null); then fail "$2 has its own $3"; fi
  echo "  a venv with only its Requires: ${reqs//$'\n'/ }"
}

check_package() {  # NAME SPEC PKGDIR(installed, for imports) DIST(its Python distribution)
  local name=$1 spec=$2 pkgdir=$3 dist=$4 rpm rpm2 spec2
  echo "== $name: the RPM rpm.yml's build job built here (check-workflows.sh build)"
  rpm=$(ls "$work"/workflows/artifacts/rpm-"$name"/RPMS/noarch/"$name"-[0-9]*-1.*.noarch.rpm)
  echo "  $(basename "$rpm")"
  generated_requires "$name" "$work/workflows/build-$name/build.log" "$rpm"
  echo "== $name: rpmlint (binary RPM)"
  rpmlint -c packaging/rpmlint.toml "$rpm" | sed 's/^/  /'
  echo "== $name: payload and scriptlets"
  mkdir -p "$work/payload-$name"
  (cd "$work/payload-$name" && rpm2cpio "$rpm" | cpio -id --quiet)
  if grep -rl "BUILDROOT" "$work/payload-$name"; then fail "$name ships build paths (above)"; fi
  if rpm -qp --scripts "$rpm" | grep -nE '%[{(a-zA-Z_]'; then fail "$name: unexpanded macro in a scriptlet"; fi
  local pyc
  pyc=$(find "$work/payload-$name" -name '*.pyc' | wc -l)
  echo "  no build paths; $pyc .pyc files; scriptlets fully expanded"
  echo "== $name: systemd-analyze verify of its units, in its own payload"
  # The units, with the programs at the paths the package really installs them (and the
  # driver's nvidia-modprobe, which no package of ours ships).
  cp -a "$work/payload-$name" "$work/units-$name"
  install -D -m 0755 /dev/null "$work/units-$name/usr/bin/nvidia-modprobe"
  verify_units "$work/units-$name"
  echo "== $name: each Python import is a Requires"
  rpm -qp --requires "$rpm" | "$python" packaging/rpm_imports.py "$work/payload-$name$pkgdir" \
    || fail "$name lacks Requires"
  echo "== $name: each Requires is in packaging/README.md's table of Fedora packages"
  local req
  while read -r req; do
    grep -qF "| \`$req" packaging/README.md || fail "$name Requires $req: not in packaging/README.md (is it in Fedora?)"
  done < <(rpm -qp --requires "$rpm" | sed -nE 's/^python3(\.[0-9]+)?dist\(([^)]+)\).*/python3dist(\2)/p')
  echo "  all $(rpm -qp --requires "$rpm" | grep -c 'dist(') python3dist() Requires are listed with their Fedora package"
  echo "== $name: Provides"
  rpm -qp --provides "$rpm" | sed 's/^/  /' | tee "$work/$name-provides"
  grep -qE "^  python3(\.[0-9]+)?dist\($dist\) = " "$work/$name-provides" || fail "$name does not provide python3dist($dist)"
  if [ -e "$work/payload-$name$sitelib/neuron" ]; then
    fail "$name puts a top-level neuron module in site-packages (Fedora's NEURON owns that name)"
  fi
  echo "== $name: user()/group() (what rpm >= 4.19 generates)"
  "$python" "$shim/sysusers-deps.py" "$rpm" | sed 's/^/  /' | tee "$work/$name-users"
  if grep -q "NOT provided" "$work/$name-users"; then fail "$name requires a user it does not create"; fi

  echo "== $name: rpm --root -i into a throw-away root"
  new_root "$name"
  rpm2cpio "$rpm" | (cd "$work" && cpio -i --quiet --to-stdout "./usr/lib/sysusers.d/$name.conf") \
    | systemd-sysusers --root="$root" - 2>&1 | sed 's/^/  /'
  install_rpm -i "$rpm"
  rpm_root -q "$name" | sed 's/^/  installed: /'
  rpm_root -V --nodeps "$name" | sed 's/^/  rpm -V: /' | grep . && fail "rpm -V $name"
  echo "  rpm -V: clean"
  deps_venv "$rpm" "$work/venv-$name" "${pkgdir##*/}"
  # Upgrade: the same sources as Release 2, the installed config edited by hand before.
  spec2=$work/$name-2.spec
  sed 's/^Release: *1/Release:        2/' "$spec" > "$spec2"
  # shellcheck disable=SC2046
  rpmbuild -bb --nodeps $(macros "$spec") --define "SHIM_DIR $shim" --define "SHIM_PYTHON $python" \
    --define "_topdir $top" --define "_sourcedir $work/SOURCES" "$spec2" > "$work/$name-build2.log" 2>&1 \
    || { tail -40 "$work/$name-build2.log"; fail "rpmbuild $name Release 2"; }
  rpm2=$(ls "$top"/RPMS/noarch/"$name"-[0-9]*-2.*.noarch.rpm)
  upgrade_rpm=$rpm2
}

upgrade_and_erase() {  # NAME CONFIG (a packaged config file, edited before the upgrade)
  local name=$1 config=$2
  echo "== $name: upgrade to $(basename "$upgrade_rpm"), then erase"
  echo "# edited by the operator" >> "$root$config"
  : > "$root/scriptlets.log"
  install_rpm -U "$upgrade_rpm"
  rpm_root -q "$name" | sed 's/^/  installed: /'
  tail -1 "$root$config" | grep -qx "# edited by the operator" || fail "$config was replaced on upgrade"
  echo "  $config: the operator's edit kept"
  [ -z "$(rpm_root -V --nodeps "$name" | grep -v " c $config\$")" ] || fail "rpm -V after upgrade"
  echo "  rpm -V: clean (but the edited config)"
  upgraded_log=$(cat "$root/scriptlets.log")
  : > "$root/scriptlets.log"
  local out
  out=$(rpm_root -e --nodeps "$name" 2>&1) || { echo "$out"; fail "rpm -e $name exited non-zero"; }
  [ "$out" = "warning: $config saved as $config.rpmsave" ] || { echo "$out"; fail "rpm -e $name"; }
  rpm_root -q "$name" > /dev/null 2>&1 && fail "$name still installed"
  [ -f "$root$config.rpmsave" ] || fail "the edited $config was not saved as .rpmsave"
  echo "  erased; the edited config kept as $config.rpmsave"
}

# ---- cortex ----
check_package cortex packaging/cortex.spec "$sitelib/cortex" helexa-cortex
expect_log "systemd-update-helper install-system-units cortex.service"
expect_log "firewall-cmd --reload --quiet"
expect_mode /etc/cortex 750 root cortex
expect_mode /etc/cortex/cortex.toml 640 root cortex
expect_mode /etc/cortex/models.toml 640 root cortex
expect_mode /var/lib/cortex 750 cortex cortex
expect_mode /usr/bin/cortex 755 root root
echo "== cortex: the installed /usr/bin/cortex with its packaged config"
api=$(port); metrics=$(port)
(cd "$work" && PYTHONPATH="$root$sitelib" \
  CORTEX_GATEWAY__LISTEN="127.0.0.1:$api" CORTEX_GATEWAY__METRICS_LISTEN="127.0.0.1:$metrics" \
  CORTEX_MODELS_CONFIG="$root/etc/cortex/models.toml" \
  exec "$work/venv-cortex/bin/python" -sP "$root/usr/bin/cortex" serve --config "$root/etc/cortex/cortex.toml") \
  2> "$work/cortex-rpm.log" &
pid=$!
printf '  /health: '
wait_health "http://127.0.0.1:$api/health" "$pid" 150 || { cat "$work/cortex-rpm.log"; fail "installed cortex"; }
kill -TERM "$pid"; wait "$pid"; pid=""
upgrade_and_erase cortex /etc/cortex/cortex.toml
grep -qx "systemd-update-helper mark-restart-system-units cortex.service" <<< "$upgraded_log" \
  || fail "cortex upgrade did not mark cortex.service for restart"
echo "  upgrade marked cortex.service for restart"
expect_log "systemd-update-helper remove-system-units cortex.service"

# ---- helexa-neuron ----
check_package helexa-neuron packaging/neuron.spec /usr/lib/helexa-neuron/neuron helexa-neuron
units="neuron.service helexa-neuron-nvidia-uvm.service"
expect_log "systemd-update-helper install-system-units $units"
expect_log "firewall-cmd --reload --quiet"
expect_mode /etc/neuron 750 root neuron
expect_mode /etc/neuron/neuron.toml 640 root neuron
expect_mode /var/lib/neuron 750 neuron neuron
expect_mode /usr/bin/neuron 755 root root
expect_mode /usr/libexec/helexa-neuron/engine-setup 755 root root
grep -qE '^video:[^:]*:[0-9]+:(.*,)?neuron(,|$)' "$root/etc/group" || fail "neuron is not in group video"
echo "  neuron is a member of video"
echo "== helexa-neuron: the installed /usr/bin/neuron with its packaged config"
nport=$(port)
(cd "$work" && PYTHONPATH="$root/usr/lib/helexa-neuron:$root$sitelib" \
  exec "$work/venv-helexa-neuron/bin/python" -sP "$root/usr/bin/neuron" \
  --config "$root/etc/neuron/neuron.toml" --host 127.0.0.1 --port "$nport") 2> "$work/neuron-rpm.log" &
pid=$!
printf '  /health: '
wait_health "http://127.0.0.1:$nport/health" "$pid" 150 || { cat "$work/neuron-rpm.log"; fail "installed neuron"; }
kill -TERM "$pid"; wait "$pid"; pid=""
upgrade_and_erase helexa-neuron /etc/neuron/neuron.toml
if grep -q "mark-restart" <<< "$upgraded_log"; then fail "a neuron upgrade must not restart it"; fi
echo "  upgrade did not restart neuron.service"
expect_log "systemd-update-helper remove-system-units $units"
echo "binary RPM checks passed"
