#!/usr/bin/env bash
# packaging/copr-publish.sh SRPMDIR: submit both SRPMs to COPR and keep both builds or neither.
# packaging/copr-publish.sh --remove: cancel and delete every build this job submitted (release.yml
# runs it when the publish step failed, timed out or was cancelled).
# Environment: CORTEX_PROJECT, NEURON_PROJECT (OWNER/PROJECT); COPR_BUILDS, the file that lists
# each submitted build as "PACKAGE ID" (default copr-builds), written the moment COPR answers, so
# that --remove finds every build however this script ends. copr-cli reads ~/.config/copr.
#
# Both or neither: a failed second submission removes the first; when either build does not
# succeed in every chroot, both builds are removed (a build that failed in one chroot still
# published the chroots that succeeded, so a failed build is deleted too, not only the other one).
set -euo pipefail
builds=${COPR_BUILDS:-copr-builds}
retry_sleep=${COPR_RETRY_SLEEP:-15}

remove() {  # cancel (a build still running) and delete each submitted build; never stops early
  local package build rc=0 try
  [ -s "$builds" ] || { echo "no COPR build to remove"; return 0; }
  while read -r package build <&3; do
    echo "removing COPR build $build ($package)"
    copr-cli cancel "$build" > /dev/null 2>&1 || true  # refused once the build has ended
    for try in 1 2 3 4; do
      if copr-cli delete-build "$build"; then continue 2; fi
      [ "$try" = 4 ] || sleep "$retry_sleep"  # a cancelled build takes a moment to stop
    done
    echo "FAILED to delete COPR build $build ($package): delete it by hand" >&2
    rc=1
  done 3< "$builds"
  [ "$rc" = 0 ] && : > "$builds"
  return "$rc"
}

if [ "${1:-}" = --remove ]; then remove; exit; fi

srpms=${1:?usage: copr-publish.sh SRPMDIR | --remove}
: > "$builds"
submit() {  # PACKAGE PROJECT SRPM: records "PACKAGE ID" in $builds
  local out id
  out=$(copr-cli build --nowait "$2" "$3") || { echo "$out"; return 1; }
  id=$(sed -n 's/^Created builds: *//p' <<< "$out")
  [ -n "$id" ] || { echo "$out"; return 1; }
  echo "$1 $id" >> "$builds"
  echo "$1: COPR build $id in $2"
}
if ! submit cortex "$CORTEX_PROJECT" "$(ls "$srpms"/cortex-[0-9]*.src.rpm)" \
    || ! submit helexa-neuron "$NEURON_PROJECT" "$(ls "$srpms"/helexa-neuron-[0-9]*.src.rpm)"; then
  echo "a submission failed: removing what was submitted" >&2
  remove || true
  exit 1
fi
# watch-build exits 0 for a cancelled build too, and non-zero for a failed one: the states decide.
# shellcheck disable=SC2046  # one word per build id
copr-cli watch-build $(cut -d' ' -f2 "$builds") || true
ok=1
while read -r package build <&3; do
  state=$(copr-cli status "$build")
  echo "$package: COPR build $build $state"
  [ "$state" = succeeded ] || ok=""
done 3< "$builds"
if [ -n "$ok" ]; then
  : > "$builds"  # published: nothing for --remove to do
  echo "published both"
  exit 0
fi
echo "not every build succeeded in every chroot: removing both" >&2
remove || true
exit 1
