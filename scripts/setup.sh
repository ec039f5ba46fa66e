#!/usr/bin/env bash
# Set up dockd on a fresh Debian machine (as root): system packages, a
# virtualenv in .venv with dockd installed, and with --test everything the
# test suite needs (udev, exFAT tools, age, rclone, OpenStack Swift, the tus
# server from npm, promtool); with --deb, what building and booting the Debian
# package needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-run}
run_pkgs=(python3-venv python3-pip)
test_pkgs=(
  udev exfatprogs exfat-fuse fuse3 util-linux kmod e2fsprogs  # loop-device cameras, real udevd, small spools
  systemd                                                    # systemd-analyze verify/security of the unit
  age openssh-client sqlite3 rclone                          # interop and peers
  faketime                                                   # a wall clock stepped under a real dockd run
  swift swift-proxy swift-object swift-container swift-account memcached  # S3 via Swift s3api
  nodejs npm                                                 # the official tus server
)
# --deb: build the Debian package (scripts/build-deb.sh) and boot it under systemd in a
# container (scripts/test-systemd.sh)
deb_pkgs=(
  debhelper dpkg-dev fakeroot lintian python3-venv python3-pip   # build-deb.sh
  systemd-container debootstrap                                  # test-systemd.sh
  exfatprogs exfat-fuse fuse3 util-linux                         # its loop-device camera
)
pkgs=("${run_pkgs[@]}")
[ "$mode" = "--test" ] && pkgs+=("${test_pkgs[@]}")
[ "$mode" = "--deb" ] && pkgs+=("${deb_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from outside Debian (already on PATH): do not fight it
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | grep -v '^$' || true)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$mode" = "--deb" ]; then
  echo "setup: ok ($mode)" >&2           # the package brings its own venv; .venv is not needed
  exit 0
fi
if [ "$mode" = "--test" ]; then
  .venv/bin/pip install -q -e '.[test]' >.venv/pip.log 2>&1 || { cat .venv/pip.log >&2; exit 1; }
  # promtool (checks of the shipped alert rules and of a real scrape) ships only in Debian's
  # prometheus package, whose install also enables a Prometheus server at boot: take the one
  # binary out of the package, into the virtualenv, instead of installing it
  if ! [ -x .venv/bin/promtool ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null \
                    || { apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; })
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -xO ./usr/bin/promtool >.venv/bin/promtool.part
    chmod 755 .venv/bin/promtool.part && mv .venv/bin/promtool.part .venv/bin/promtool
    rm -rf "$tmp"
  fi
  if [ -f tests/tus-server/package.json ]; then
    (cd tests/tus-server && npm ci --silent --no-audit --no-fund >/dev/null)
  fi
else
  .venv/bin/pip install -q -e . >.venv/pip.log 2>&1 || { cat .venv/pip.log >&2; exit 1; }
fi
.venv/bin/python -c "import dockd" >/dev/null
echo "setup: ok ($mode)" >&2
