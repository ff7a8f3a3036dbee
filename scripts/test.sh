#!/usr/bin/env bash
# Installs what is missing, builds llep with AddressSanitizer and UndefinedBehaviorSanitizer
# and warnings as errors, and runs every test (Check suites, tool tests, fuzz targets).
# Ends with each suite's Check summary and one line "N passed, N failed".
#
#   bash scripts/test.sh            (LLEP_BUILD_DIR=dir to build elsewhere than build-test)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

bash scripts/install-deps.sh || exit 1

build=${LLEP_BUILD_DIR:-build-test}
opts=(-Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false
      -Dwerror=true -Dcuda=disabled)
if [ -d "$build/meson-private" ]; then
  meson setup --reconfigure "$build" "${opts[@]}" >/dev/null || exit 1
else
  meson setup "$build" "${opts[@]}" >/dev/null || exit 1
fi
ninja -C "$build" || exit 1

# The CUDA code must keep compiling where nvcc exists, even though nothing here can run it.
if command -v nvcc >/dev/null 2>&1; then
  cuda_build=${build}-cuda
  [ -d "$cuda_build/meson-private" ] || meson setup "$cuda_build" -Dcuda=enabled -Dwerror=true >/dev/null || exit 1
  ninja -C "$cuda_build" || exit 1
fi

meson test -C "$build" --print-errorlogs --num-processes 2
status=$?

# The .deb set: built from this tree with dpkg-buildpackage, installed into a scratch root
# with dpkg --root and run from there (30-60 s; 77 means it cannot run here, e.g. not root).
echo "packaging: building and installing the Debian packages ..."
bash tests/test-packaging.sh tests/forward-check.c --worktree > "$build/meson-logs/packaging.log" 2>&1
pkg=$?
case $pkg in
  0) echo "packaging: OK" ;;
  77) echo "packaging: SKIP (see $build/meson-logs/packaging.log)" ;;
  *) echo "packaging: FAIL (exit $pkg)"; tail -40 "$build/meson-logs/packaging.log"; status=1 ;;
esac

python3 scripts/test-summary.py "$build/meson-logs/testlog.json" "$pkg" || status=1
exit $status
