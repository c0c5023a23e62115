#!/usr/bin/env bash
# packaging/srpm.sh cortex|helexa-neuron TOPDIR [VERSION]: build one SRPM from the
# committed tree (git archive of HEAD) into TOPDIR/SRPMS. With VERSION, it is first written
# into the spec itself (a --define would not be kept in the SRPM that COPR rebuilds from).
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 top=$2 version=${3:-}
case "$name" in
  cortex) spec=packaging/cortex.spec ;;
  helexa-neuron) spec=packaging/neuron.spec ;;
  *) echo "usage: $0 cortex|helexa-neuron TOPDIR [VERSION]" >&2; exit 2 ;;
esac
if [ -n "$version" ]; then
  sed -i "s/^Version: .*/Version:        $version/" "$spec"
fi
version=$(sed -n 's/^Version: *//p' "$spec")
mkdir -p "$top/SOURCES"
git archive --prefix="$name-$version/" -o "$top/SOURCES/$name-$version.tar.gz" HEAD
cp "packaging/sysusers/$name.conf" "$top/SOURCES/$name.sysusers.conf"
rpmbuild -bs --define "_topdir $top" "$spec"
