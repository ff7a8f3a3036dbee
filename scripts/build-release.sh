#!/usr/bin/env bash
# Installs what is missing and builds llep (release) for the demos and benchmarks, in
# $LLEP_BUILD_DIR (default build). Prints the build directory on its last line, so that a
# script can say: build=$(bash scripts/build-release.sh | tail -1)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh >&2
build=${LLEP_BUILD_DIR:-build}
[ -d "$build/meson-private" ] || meson setup "$build" -Dbuildtype=release >/dev/null
echo "building in $build ..." >&2
ninja -C "$build" >/dev/null
echo "$build"
