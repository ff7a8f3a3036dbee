#!/usr/bin/env bash
# Installs the Debian packages llep's build and tests need, when any is missing, and the Python
# packages of scripts/python-requirements.txt into the virtual environment .venv (Debian's
# python3; pip is upgraded first). Idempotent: when everything is present it only checks and
# returns. Needs root (or sudo) to install Debian packages.
set -euo pipefail

packages=(
  build-essential meson ninja-build pkg-config python3 python3-venv
  libuv1-dev libprotobuf-c-dev protobuf-c-compiler libsystemd-dev libsodium-dev
  check libopenblas-dev libjson-c-dev gnuplot-nox
  # llepd's metrics endpoint (libmicrohttpd); curl scrapes it in tests/python/test_metrics.py
  libmicrohttpd-dev curl
  # systemd-analyze, -sysusers, -tmpfiles and groff for the install test; debhelper, dpkg-dev
  # and git to build and check the .deb set (tests/test-packaging.sh)
  systemd groff-base debhelper dpkg-dev git
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Python packages for the tests (checkpoints written by the safetensors package, the Python
# client's tests): a virtual environment of Debian's python3 at .venv, so that nothing is
# installed into the system's Python. The requirements file's hash marks it up to date.
cd "$(dirname "$0")/.."
req=scripts/python-requirements.txt
venv=.venv
stamp="$venv/.llep-requirements"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x "$venv/bin/python3" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "install-deps: Python packages present in $venv"
  exit 0
fi
echo "install-deps: installing the Python packages of $req into $venv ..."
[ -x "$venv/bin/python3" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/python3" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python3" -m pip install -q --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
