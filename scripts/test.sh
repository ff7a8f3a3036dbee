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
python3 scripts/test-summary.py "$build/meson-logs/testlog.json" || status=1
exit $status
