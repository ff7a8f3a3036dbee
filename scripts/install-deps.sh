#!/usr/bin/env bash
# Installs the Debian packages llep's build and tests need, when any is missing. Idempotent:
# when everything is present it only checks and returns. Needs root (or sudo) to install.
set -euo pipefail

packages=(
  build-essential meson ninja-build pkg-config python3
  libuv1-dev libprotobuf-c-dev protobuf-c-compiler libsystemd-dev libsodium-dev
  check libopenblas-dev libjson-c-dev gnuplot-nox
  # systemd-analyze, -sysusers, -tmpfiles and groff for the install test; debhelper, dpkg-dev
  # and git to build and check the .deb set (tests/test-packaging.sh)
  systemd groff-base debhelper dpkg-dev git
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
