#!/usr/bin/env bash
# Builds the GPU run's programs here (where nvcc and the Debian -dev packages are) and gathers
# into BUILD/lib the shared libraries they need that a bare CUDA machine lacks (libuv,
# protobuf-c, libsodium, OpenBLAS, libsystemd and what those pull in), so that the build
# directory alone can travel to a lent GPU machine and run there with tests/gpu/lent.sh.
# The CUDA libraries (cudart, cuBLAS, NCCL) and libc/libstdc++ are not copied: lent.sh finds
# the GPU machine's own.
#
#   bash tests/gpu/pack.sh [BUILD]          (default build-gpu)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${1:-build-gpu}
bash tests/gpu/run.sh --build-only --build-dir "$build"
mkdir -p "$build/lib"
exes=(tests/test-gpu-kernels tests/test-gpu-engine tools/llep-bench daemon/llepd tools/llepctl
      tools/llep-demo tools/llep-model-run tests/test-gpu-space)
# Libraries of the base system and of the CUDA toolkit stay behind.
keep_out='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libgcc_s|libstdc\+\+|libcud|libcublas|libnccl|libllep)'
for exe in "${exes[@]}"; do
    ldd "$build/$exe" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r name path; do
    [[ $name =~ $keep_out ]] && continue
    cp -L "$path" "$build/lib/$name"
done
cp -L "$build"/libclient/libllep-client.so.0 "$build/lib/"
echo "pack.sh: $build is ready to travel ($(du -sh "$build" | cut -f1)); libraries in $build/lib:"
ls "$build/lib"
