# shellcheck shell=bash
# Sourced by packaging/check.sh, packaging/check-rpms.sh and packaging/test-checks.sh: the checks
# that must fail on a broken input, as functions, so that test-checks.sh can feed each one a
# broken input and see it fail. Each fails with `fail` (exit 1, message on stderr).

fail() { echo "FAILED: $*" >&2; exit 1; }

# The highest `systemd-analyze security --offline=yes` exposure each unit may have (0-10, lower
# is better). Measured with systemd 252; packaging/README.md explains what each unit needs.
declare -A exposure_ceiling=(
  [cortex.service]=1.4
  [neuron.service]=2.2
  [helexa-neuron-nvidia-uvm.service]=9.6
)

# check_version: the one version (packaging/version.sh), its exit status kept; then the tag
# rules: a tag with `-` is refused for that reason, and the tag of the version is taken.
check_version() {
  local version pep440 out
  version=$(packaging/version.sh) || fail "packaging/version.sh (above)"
  echo "  RPM Version $version"
  pep440=$(sed -nE 's/^version = "([^"]*)"$/\1/p' cortex/pyproject.toml)
  out=$(packaging/version.sh "v$pep440-rc1" 2>&1) && fail "version.sh took the tag v$pep440-rc1"
  grep -q "has a '-'" <<< "$out" || fail "version.sh refused v$pep440-rc1, but not for its '-': $out"
  packaging/version.sh "v$pep440" > /dev/null || fail "version.sh refused the tag v$pep440"
  echo "  tag v$pep440 taken; v$pep440-rc1 refused for its '-'"
}

# verify_units ROOT: `systemd-analyze verify --root=ROOT` of each unit in
# ROOT/usr/lib/systemd/system, with the programs they run in ROOT (a program that is not there
# is reported: an ExecStart= typo fails). This host's units are copied in after, so that the
# targets they name exist. Any output fails.
verify_units() {
  local root=$1 out units
  units=$(cd "$root/usr/lib/systemd/system" && ls -- *.service)
  cp -rn /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/" 2> /dev/null || true
  # shellcheck disable=SC2086  # one word per unit name
  out=$(cd / && systemd-analyze verify --root="$root" $units 2>&1) || true
  if [ -n "$out" ]; then echo "$out" >&2; fail "systemd-analyze verify:" $units; fi
  echo "  systemd-analyze verify:" $units "(clean)"
}

# exposure UNITFILE...: each unit's exposure, at or under its ceiling (exposure_ceiling).
exposure() {
  local unit name ceiling score
  for unit in "$@"; do
    name=$(basename "$unit")
    ceiling=${exposure_ceiling[$name]:-}
    [ -n "$ceiling" ] || fail "$name has no exposure ceiling in packaging/checks.sh"
    score=$(systemd-analyze security --offline=yes "$unit" 2> /dev/null \
      | sed -nE 's/^→ Overall exposure level for [^:]*: ([0-9.]+) .*/\1/p')
    [ -n "$score" ] || fail "$name: systemd-analyze security gave no exposure level"
    awk -v s="$score" -v c="$ceiling" 'BEGIN { exit !(s <= c) }' \
      || fail "$name: exposure $score is over its ceiling $ceiling"
    echo "  $name: exposure $score (ceiling $ceiling)"
  done
}

# generated_requires NAME BUILDLOG RPM: rpm's Python dependency generator ran (it writes a
# traceback into the build log and rpmbuild still succeeds when it cannot import `packaging`)
# and the package has generated python3dist() Requires.
generated_requires() {
  local n
  if grep -nE "Traceback|pythondistdeps|ModuleNotFoundError" "$2" >&2; then
    fail "$1: rpm's Python dependency generator failed (above), so the RPM lacks its Requires"
  fi
  n=$(rpm -qp --requires "$3" | grep -cE '^python3(\.[0-9]+)?dist\(') || true
  [ "$n" -gt 0 ] || fail "$1: no generated python3dist() Requires"
  echo "  $n generated python3dist() Requires; the generator ran cleanly"
}
