#!/usr/bin/env bash
# packaging/check-workflows.sh WORK build|install|publish: run GitHub workflow jobs here, their
# run: scripts as written (packaging/workflow_scripts.py evaluates the ${{ }} expressions), with
# stand-ins only for what needs Fedora or GitHub. Called by packaging/check.sh:
#   build    rpm.yml's build job for each package: its SRPM, dnf builddep loop and rpmbuild -ba
#            (the rpm shim for Fedora's macros); the RPMs land in WORK/workflows/artifacts,
#            where check-rpms.sh takes them from.
#   install  rpm.yml's install job for each package (after check-rpms.sh made WORK/venv-NAME):
#            dnf install into a throw-away root, the installed program started by the job's
#            script with its packaged config until /health answers and stopped by SIGTERM (its
#            exit status checked), dnf remove. In a network namespace of its own (fixed ports).
#   publish  release.yml's publish job against a stand-in copr-cli, in four scenarios: both
#            builds succeed; the second submission fails; one build fails in a chroot; the watch
#            hangs until the step's timeout. Both builds or neither must remain.
# Stand-ins (WORK/workflows/bin, first on PATH): dnf (Fedora 43's dnf5: `builddep` is refused
# until dnf5-command(builddep) is installed; builddep records the BuildRequires as installed;
# install/remove of an RPM file go to `rpm --root`), rpmbuild (the real one with the shim's
# macros; `-br` exits 0 once dnf builddep has "installed" what it generated, as on Fedora), rpm
# (--root for the installed root), getent and id (read the root's /etc), setpriv (runs the
# program as this user), cortex and neuron (the installed program, run by the venv holding its
# Requires), copr-cli. Each uses: step is done by hand (checkout: a clone of HEAD; upload and
# download-artifact: a copy).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD work=$1 what=$2
# The workflows to run (packaging/test-checks.sh points this at broken copies).
workflows=${WORKFLOWS:-.github/workflows}
# shellcheck source=packaging/checks.sh
. packaging/checks.sh
unset PYTHONPATH PYTHONDONTWRITEBYTECODE PYTHONHOME
shim=$(cd "${RPM_SHIM:-../shared/rpm-shim}" 2> /dev/null && pwd) || shim=none
python=$repo/.venv/bin/python
wf=$work/workflows
bin=$wf/bin
mkdir -p "$bin" "$wf/home" "$wf/artifacts"
export WF_STATE=$wf/state SHIM=$shim SHIM_PY=$python REPO=$repo
mkdir -p "$WF_STATE"

standins() {
  cat > "$bin/dnf" <<'EOF'
#!/bin/bash
# Fedora 43's dnf (dnf5), as far as the workflows use it.
set -euo pipefail
echo "dnf $*" >> "$WF_STATE/dnf.log"
args=()
for a in "$@"; do [ "$a" = -y ] || args+=("$a"); done
case ${args[0]} in
  install)
    for p in "${args[@]:1}"; do
      case $p in
        *.rpm)  # into the throw-away root: its users first (rpm >= 4.19 does that), no scriptlets
          rpm2cpio "$p" | (cd "$WF_STATE" && cpio -i --quiet --to-stdout './usr/lib/sysusers.d/*.conf') \
            | systemd-sysusers --root="$ROOT" - > /dev/null
          /usr/bin/rpm --root "$ROOT" -i --nodeps --noscripts "$p" 2>&1 | { grep -v -e "use Alien" -e "assuming you know" || true; } ;;
        *) echo "$p" >> "$WF_STATE/installed" ;;
      esac
    done ;;
  builddep)
    grep -qxF 'dnf5-command(builddep)' "$WF_STATE/installed" 2> /dev/null \
      || { echo 'Unknown argument "builddep" for command "dnf5".' >&2; exit 2; }
    for f in "${args[@]:1}"; do
      case $f in
        *.rpm) /usr/bin/rpm -qp --requires "$f" >> "$WF_STATE/buildreqs" ;;
        *.spec) rpmspec -q --buildrequires "$f" >> "$WF_STATE/buildreqs" ;;
        *) echo "dnf builddep stand-in: $f" >&2; exit 2 ;;
      esac
    done ;;
  remove) /usr/bin/rpm --root "$ROOT" -e --nodeps --noscripts "${args[@]:1}" ;;
  *) echo "dnf stand-in: '${args[0]}' is not modelled" >&2; exit 2 ;;
esac
EOF
  cat > "$bin/rpmbuild" <<'EOF'
#!/bin/bash
# The real rpmbuild with the rpm shim's macros (Fedora's) in place of Fedora's own.
spec=${!#}
macros=(--load "$SHIM/macros.shim" --load "$SHIM/macros.sysusers-f42" --load "$REPO/packaging/shim-extra.macros")
if grep -q '^BuildRequires: *firewalld-filesystem' "$spec" 2> /dev/null; then macros+=(--load "$SHIM/macros.firewalld"); fi
rc=0
/usr/bin/rpmbuild --nodeps "${macros[@]}" --define "SHIM_DIR $SHIM" --define "SHIM_PYTHON $SHIM_PY" "$@" || rc=$?
if [ "$1" = -br ] && [ "$rc" = 11 ]; then
  # As on Fedora: 0 once every generated BuildRequires is installed (by dnf builddep).
  topdir=$(/usr/bin/rpm --define "${3:?-br --define \"_topdir DIR\" SPEC}" --eval '%{_topdir}')
  nosrc=$(ls -t "$topdir"/SRPMS/*.buildreqs.nosrc.rpm | head -1)
  if [ -f "$WF_STATE/buildreqs" ] && [ -z "$(/usr/bin/rpm -qp --requires "$nosrc" | grep -vxFf "$WF_STATE/buildreqs")" ]; then rc=0; fi
fi
exit "$rc"
EOF
  cat > "$bin/rpm" <<'EOF'
#!/bin/bash
# rpm on the installed root (ROOT) for queries of installed packages; package files as they are.
case "$1" in
  -qp|-qpl|-qpR) exec /usr/bin/rpm "$@" ;;
  -V) shift; exec /usr/bin/rpm --root "$ROOT" -V --nodeps "$@" ;;
  -q|-e) exec /usr/bin/rpm --root "$ROOT" "$@" ;;
  *) exec /usr/bin/rpm "$@" ;;
esac
EOF
  cat > "$bin/getent" <<'EOF'
#!/bin/bash
grep "^$2:" "$ROOT/etc/$1"
EOF
  cat > "$bin/id" <<'EOF'
#!/bin/bash
# id -nG USER, from the root's /etc/group
[ "$1" = -nG ] || exec /usr/bin/id "$@"
awk -F: -v u="$2" '$4 ~ "(^|,)" u "(,|$)" || $1 == u { printf "%s ", $1 } END { print "" }' "$ROOT/etc/group"
EOF
  cat > "$bin/setpriv" <<'EOF'
#!/bin/bash
# Runs the program as this user (the service user exists only in the root); execs as setpriv does.
while [ "$1" != -- ]; do shift; done
shift
exec "$@"
EOF
  for program in cortex neuron; do
    cat > "$bin/$program" <<EOF
#!/bin/bash
# The installed /usr/bin/$program (ROOT), by the venv holding exactly its Requires; /etc paths
# in its arguments are the root's.
args=()
for a in "\$@"; do case \$a in /etc/*) args+=("\$ROOT\$a") ;; *) args+=("\$a") ;; esac; done
export PYTHONPATH=\$ROOT/usr/lib/helexa-neuron:\$ROOT\$SITELIB CORTEX_MODELS_CONFIG=\$ROOT/etc/cortex/models.toml
exec "\$VENV/bin/python" -sP "\$ROOT/usr/bin/$program" "\${args[@]}"
EOF
  done
  cat > "$bin/copr-cli" <<'EOF'
#!/bin/bash
# COPR, per COPR_SCENARIO: ok | second-submission-fails | chroot-fails | watch-hangs
echo "copr-cli $*" >> "$WF_STATE/copr.log"
case "$1" in
  build)
    n=$(( $(cat "$WF_STATE/copr.n" 2> /dev/null || echo 0) + 1 )); echo "$n" > "$WF_STATE/copr.n"
    if [ "$COPR_SCENARIO" = second-submission-fails ] && [ "$n" = 2 ]; then echo "Error: 502 Bad Gateway" >&2; exit 1; fi
    echo "Build was added to ${3%%/*}."; echo "Created builds: $((100 + n))" ;;
  watch-build) if [ "$COPR_SCENARIO" = watch-hangs ]; then sleep 600; fi
    [ "$COPR_SCENARIO" != chroot-fails ] ;;
  status) if [ "$COPR_SCENARIO" = chroot-fails ] && [ "$2" = 101 ]; then echo failed; else echo succeeded; fi ;;
  cancel|delete-build) ;;
  *) echo "copr-cli stand-in: $1 is not modelled" >&2; exit 2 ;;
esac
EOF
  chmod +x "$bin"/*
}

# run_job WORKFLOW JOB WORKSPACE NAME=VALUE...: each step in order, as GitHub runs it: run:
# steps by `bash --noprofile --norc -eo pipefail` (shell: bash) in WORKSPACE; a step with
# `if: failure() || cancelled()` only after a failed step. STEP_TIMEOUT (seconds) stands for a
# step's timeout-minutes. NETNS=1: the steps run in a network namespace of their own.
run_job() {
  local workflow=$1 job=$2 ws=$3 steps nn kind cond timeout failed="" rc
  shift 3
  # Called as `run_job ... || ...`, where bash ignores set -e: each failure is caught by hand.
  steps=$wf/steps-$(basename "$ws")
  last_steps=$steps
  "$python" packaging/workflow_scripts.py job "$workflow" "$job" "$steps" "$@" || return 1
  [ -s "$steps/steps.tsv" ] || return 1
  mkdir -p "$ws" || return 1
  while IFS=$'\t' read -r nn kind cond timeout <&3; do
    case $cond in
      -) [ -z "$failed" ] || continue ;;
      "failure() || cancelled()") [ -n "$failed" ] || continue ;;
      *) echo "$workflow $job step $nn: if: $cond is not modelled" >&2; return 1 ;;
    esac
    case $kind in
      run)
        local limit=600
        [ "$timeout" = - ] || limit=${STEP_TIMEOUT:-600}
        local cmd=(timeout "$limit" bash --noprofile --norc -eo pipefail "$steps/$nn.sh")
        if [ -n "${NETNS:-}" ]; then
          cmd=(unshare -n bash -c 'ip link set lo up && exec "$@"' - "${cmd[@]}")
        fi
        rc=0
        (cd "$ws" && HOME=$wf/home PATH=$bin:$PATH "${cmd[@]}") > "$steps/$nn.log" 2>&1 || rc=$?
        echo "    step $nn: exit $rc" >> "$steps/summary"
        [ "$rc" = 0 ] || failed=$nn ;;
      actions/checkout@v4)
        (set -e; git -C "$ws" init -q; git -C "$ws" fetch -q "$repo" HEAD; git -C "$ws" checkout -q FETCH_HEAD) \
          || failed=$nn ;;
      actions/upload-artifact@v4)
        (set -e
         mkdir -p "$wf/artifacts/rpm-$PACKAGE/RPMS/noarch" "$wf/artifacts/rpm-$PACKAGE/SRPMS"
         cp "$ws"/rpmbuild/RPMS/noarch/*.rpm "$wf/artifacts/rpm-$PACKAGE/RPMS/noarch/"
         cp "$ws"/rpmbuild/SRPMS/*.src.rpm "$wf/artifacts/rpm-$PACKAGE/SRPMS/") || failed=$nn ;;
      actions/download-artifact@v4)
        if [ "$job" = publish ]; then cp -r "$wf"/artifacts/rpm-*/. "$ws/" || failed=$nn
        else cp -r "$wf/artifacts/rpm-$PACKAGE/." "$ws/" || failed=$nn; fi ;;
      *) echo "$workflow $job step $nn: uses: $kind is not modelled" >&2; return 1 ;;
    esac
  done 3< "$steps/steps.tsv"
  [ -z "$failed" ]
}
show() {  # the logs of a job's steps, on failure
  local log
  for log in "$last_steps"/*.log; do echo "--- $(basename "$log")"; tail -30 "$log"; done >&2
}

standins
case $what in
  build)
    for pkg in cortex:packaging/cortex.spec helexa-neuron:packaging/neuron.spec; do
      export PACKAGE=${pkg%%:*}
      rm -f "$WF_STATE/installed" "$WF_STATE/buildreqs"
      run_job "$workflows/rpm.yml" build "$wf/build-$PACKAGE" \
        "matrix.package=$PACKAGE" "matrix.spec=${pkg#*:}" || { show; fail "rpm.yml build ($PACKAGE)"; }
      grep -q "^dnf -y builddep rpmbuild/SRPMS/$PACKAGE-.*buildreqs.nosrc.rpm" "$WF_STATE/dnf.log" \
        || fail "rpm.yml build ($PACKAGE): the builddep loop never installed the generated BuildRequires"
      echo "  rpm.yml build ($PACKAGE): $(cd "$wf/artifacts/rpm-$PACKAGE" && ls RPMS/noarch/*.rpm SRPMS/*.rpm | paste -sd' ')"
    done ;;
  install)
    export SITELIB
    SITELIB=$(/usr/bin/rpm --load "$shim/macros.shim" --eval '%python3_sitelib')
    for PACKAGE in cortex helexa-neuron; do
      export PACKAGE ROOT=$wf/root-$PACKAGE VENV=$work/venv-$PACKAGE
      mkdir -p "$ROOT/etc"
      /usr/bin/rpm --root "$ROOT" --initdb
      NETNS=1 run_job "$workflows/rpm.yml" install "$wf/install-$PACKAGE" "matrix.package=$PACKAGE" \
        || { show; fail "rpm.yml install ($PACKAGE)"; }
      grep -qx "stopped cleanly" "$last_steps/03.log" || { show; fail "rpm.yml install ($PACKAGE): not stopped cleanly"; }
      echo "  rpm.yml install ($PACKAGE): installed, /health $(grep -m1 -o '"status": *"[a-z]*"' "$last_steps/03.log" || echo answered), stopped cleanly, removed"
    done ;;
  publish)
    for scenario in ok second-submission-fails chroot-fails watch-hangs; do
      export COPR_SCENARIO=$scenario COPR_RETRY_SLEEP=0 STEP_TIMEOUT=3
      rm -f "$WF_STATE/copr.log" "$WF_STATE/copr.n" "$WF_STATE/installed"
      rc=0
      run_job "$workflows/release.yml" publish "$wf/publish-$scenario" || rc=$?
      log=$(cat "$WF_STATE/copr.log")
      deleted=$(grep -c '^copr-cli delete-build' <<< "$log" || true)
      case $scenario in
        ok) [ "$rc" = 0 ] && [ "$deleted" = 0 ] && [ "$(grep -c '^copr-cli build --nowait' <<< "$log")" = 2 ] \
              && grep -qx "copr-cli watch-build 101 102" <<< "$log" \
              || { show; echo "$log" >&2; fail "publish ($scenario): not both submitted, watched and kept"; } ;;
        second-submission-fails)
          [ "$rc" != 0 ] && grep -qx "copr-cli delete-build 101" <<< "$log" && [ "$deleted" = 1 ] \
            || { show; echo "$log" >&2; fail "publish ($scenario): the first build was not removed"; } ;;
        chroot-fails|watch-hangs)
          [ "$rc" != 0 ] && grep -qx "copr-cli cancel 101" <<< "$log" && grep -qx "copr-cli delete-build 101" <<< "$log" \
            && grep -qx "copr-cli delete-build 102" <<< "$log" \
            || { show; echo "$log" >&2; fail "publish ($scenario): not both builds removed"; } ;;
      esac
      echo "  release.yml publish, $scenario: $( [ "$rc" = 0 ] && echo "published" || echo "failed"), $deleted build(s) deleted"
    done ;;
  *) fail "usage: $0 WORK build|install|publish" ;;
esac
