#!/usr/bin/env bash
# packaging/srpm.sh cortex|helexa-neuron TOPDIR [TAG]: build one SRPM from the committed tree
# (git archive of HEAD) into TOPDIR/SRPMS. With TAG (v1.2.3), packaging/version.sh first checks
# that the tag, both pyproject.toml and both __version__ name one version, and its RPM form is
# written into the spec itself (a --define would not be kept in the SRPM that COPR rebuilds from).
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 top=$2 tag=${3:-}
case "$name" in
  cortex) spec=packaging/cortex.spec ;;
  helexa-neuron) spec=packaging/neuron.spec ;;
  *) echo "usage: $0 cortex|helexa-neuron TOPDIR [TAG]" >&2; exit 2 ;;
esac
if [ -n "$tag" ]; then
  version=$(packaging/version.sh "$tag")
  sed -i "s/^Version: .*/Version:        $version/" "$spec"
fi
version=$(sed -n 's/^Version: *//p' "$spec")
mkdir -p "$top/SOURCES"
git archive --prefix="$name-$version/" -o "$top/SOURCES/$name-$version.tar.gz" HEAD
cp "packaging/sysusers/$name.conf" "$top/SOURCES/$name.sysusers.conf"
rpmbuild -bs --define "_topdir $top" "$spec"
