#!/usr/bin/env bash
# packaging/version.sh [TAG]: the one version of a release, checked everywhere it is written.
# cortex/pyproject.toml, neuron/pyproject.toml, cortex's and neuron's __version__ (and, without
# TAG, both specs' Version:) must agree; with TAG (v1.2.3, v1.2.3rc1) the tag must name that
# same version. The version must be a plain PEP 440 release or pre-release (1.2.3, 1.2.3a1,
# 1.2.3b1, 1.2.3rc1): no `-`, which an RPM Version cannot hold. Prints the RPM Version:
# 1.2.3, or 1.2.3~rc1 for a pre-release (`~` sorts before the release, as in PEP 440).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "version: $*" >&2; exit 1; }
pyproject() { sed -nE 's/^version = "([^"]*)"$/\1/p' "$1/pyproject.toml"; }
dunder() { sed -nE 's/^__version__ = "([^"]*)"$/\1/p' "$1/src/$1/__init__.py"; }
spec() { sed -nE 's/^Version: *//p' "packaging/$1.spec"; }

version=$(pyproject cortex)
for found in "neuron/pyproject.toml:$(pyproject neuron)" \
    "cortex/src/cortex/__init__.py:$(dunder cortex)" "neuron/src/neuron/__init__.py:$(dunder neuron)"; do
  [ "${found#*:}" = "$version" ] || fail "${found%%:*} says '${found#*:}', cortex/pyproject.toml '$version'"
done
[[ "$version" =~ ^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?$ ]] \
  || fail "'$version' is not a plain PEP 440 release (1.2.3) or pre-release (1.2.3rc1)"
rpm_version=$(sed -E 's/(a|b|rc)([0-9]+)$/~\1\2/' <<< "$version")
if [ $# -gt 0 ]; then
  case "$1" in *-*) fail "tag '$1' has a '-', which an RPM Version cannot hold (v1.2.3rc1, not v1.2.3-rc1)" ;; esac
  tag=${1#v}
  [ "$tag" = "$version" ] || fail "tag '$1' is not v$version (the version in pyproject.toml and __version__)"
else
  for name in cortex neuron; do
    [ "$(spec "$name")" = "$rpm_version" ] || fail "packaging/$name.spec Version: '$(spec "$name")', want '$rpm_version'"
  done
fi
echo "$rpm_version"
