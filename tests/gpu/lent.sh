#!/usr/bin/env bash
# Runs tests/gpu/run.sh on a lent GPU machine from a build made elsewhere by tests/gpu/pack.sh
# (the machine has the CUDA driver and libraries but none of the Debian packages llep builds
# against). Finds the machine's cudart, cuBLAS and NCCL (the CUDA toolkit's folders, then the
# nvidia-* Python wheels that PyTorch brings), puts them and BUILD/lib on LD_LIBRARY_PATH,
# fails at once if any program still lacks a library, then runs run.sh --skip-build with the
# remaining arguments.
#
#   bash tests/gpu/lent.sh [--build-dir BUILD] [run.sh arguments...]     (default build-gpu)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=build-gpu
if [ "${1:-}" = --build-dir ]; then build=$2; shift 2; fi
case $build in /*) ;; *) build=$root/$build ;; esac

dirs=("$build/lib")
wheel_dirs=$(python3 - <<'PY' 2>/dev/null || true
import glob, os
try:
    import nvidia
    for p in nvidia.__path__:
        for d in sorted(glob.glob(os.path.join(p, "*", "lib"))):
            print(d)
except ImportError:
    pass
PY
)
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    found=
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
             /usr/lib/x86_64-linux-gnu $wheel_dirs; do
        [ -e "$d/$lib" ] && { found=$d; break; }
    done
    [ -n "$found" ] || found=$(dirname "$(find /usr /opt -name "$lib" 2>/dev/null | head -1)" 2>/dev/null || true)
    if [ -z "$found" ] || [ "$found" = . ]; then
        echo "lent.sh: $lib not found on this machine" >&2
        exit 4
    fi
    echo "lent.sh: $lib from $found"
    dirs+=("$found")
done
LD_LIBRARY_PATH=$(printf '%s:' "${dirs[@]}")${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
missing=0
for exe in tests/test-gpu-kernels tests/test-gpu-engine tools/llep-bench daemon/llepd \
           tools/llepctl tools/llep-demo tests/test-gpu-space; do
    if ldd "$build/$exe" | grep 'not found'; then
        echo "lent.sh: $exe lacks the libraries above" >&2
        missing=1
    fi
done
[ $missing = 0 ] || exit 4
exec bash tests/gpu/run.sh --skip-build --build-dir "$build" "$@"
