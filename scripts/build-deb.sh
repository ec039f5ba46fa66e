#!/usr/bin/env bash
# Build dist/dockd_<version>_<arch>.deb with debhelper (debian/), then run lintian on it.
# Needs the packages of `./scripts/setup.sh --deb`, and PyPI for dockd's dependencies.
# The build runs in a copy of the tree, so debian/ build leftovers never land here.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
debversion=$(dpkg-parsechangelog -l debian/changelog -S Version)
if [ "$version" != "$debversion" ]; then
  echo "build-deb: pyproject.toml says $version, debian/changelog says $debversion: add a changelog entry" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)

work=$(mktemp -d /tmp/dockd-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/dockd"
# what git knows of (tracked, and new files not ignored): no .venv, no node_modules
git ls-files -z --cached --others --exclude-standard \
  | grep -zv '^tests/tus-server/node_modules/' \
  | tar -C "$repo" --null -T - -cf - 2>/dev/null | tar -C "$work/dockd" -xf -
(cd "$work/dockd" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) \
  || { tail -40 "$work/build.log" >&2; echo "build-deb: dpkg-buildpackage failed" >&2; exit 1; }

mkdir -p dist
deb="dist/dockd_${version}_${arch}.deb"
mv "$work/dockd_${version}_${arch}.deb" "$deb"
echo "build-deb: $deb ($(du -h "$deb" | cut -f1))" >&2

if [ "${DOCKD_LINTIAN:-1}" = 1 ]; then
  # Overrides (debian/dockd.lintian-overrides) each say why. Warnings fail the build.
  lintian --fail-on error,warning --tag-display-limit 0 "$deb"
  echo "build-deb: lintian clean" >&2
fi
