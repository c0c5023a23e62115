#!/usr/bin/env bash
# `make docs`: build the docs site (mkdocs.yml, docs/) into site/ with --strict, in its own
# venv (.venv-docs, from the pinned requirements-docs.txt), then prove that the strict build
# fails on a broken link and on a broken anchor: the same site with one of each added must not
# build; and check that README.md's relative links name files that exist. PYTHON picks the interpreter for the venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-docs
stamp="$venv/.stamp-$(sha256sum requirements-docs.txt | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q -r requirements-docs.txt
  touch "$stamp"
fi
export NO_MKDOCS_2_WARNING=1  # Material's banner about its successor, on every build
"$venv/bin/mkdocs" build --strict --clean --site-dir site

# README.md is not part of the site (it is the manual on GitHub and in the RPMs' %doc): its
# relative links must name files that exist.
"$venv/bin/python" - <<'PY'
import pathlib, re, sys
text = pathlib.Path("README.md").read_text(encoding="utf-8")
text = re.sub(r"```.*?```", "", text, flags=re.S)  # not inside code blocks
missing = [
    link
    for link in re.findall(r"\]\(([^)\s]+)\)", text)
    if not re.match(r"[a-z]+:|#", link) and not pathlib.Path(link.split("#")[0]).exists()
]
if missing:
    sys.exit(f"docs: README.md links to files that do not exist: {missing}")
PY

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for broken in '[a page](no-such-page.md)' '[a section](configuration.md#no-such-section)'; do
  rm -rf "$tmp/docs" "$tmp/site"
  cp -r docs mkdocs.yml "$tmp/"
  printf '\n%s\n' "$broken" >> "$tmp/docs/index.md"
  # No -q: quiet drops the warnings before --strict counts them, and the build passes.
  if "$venv/bin/mkdocs" build --strict -f "$tmp/mkdocs.yml" --site-dir "$tmp/site" \
    > "$tmp/out" 2>&1; then
    echo "docs: the strict build passed with a broken link in it: $broken" >&2
    exit 1
  fi
  target=${broken#*(}
  if ! grep -qF "${target%)}" "$tmp/out"; then
    cat "$tmp/out" >&2
    echo "docs: the strict build failed, but not on the broken link $broken" >&2
    exit 1
  fi
done
echo "docs: site/ built with --strict; a broken link and a broken anchor each fail the build"
