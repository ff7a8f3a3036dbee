#!/usr/bin/env bash
# The GPU run of issues 6 and 7, on a machine with one (or more) NVIDIA GPU(s); 179 s on one
# H200 (2026-12-04):
#   1. builds llep with CUDA (release, warnings as errors) in $BUILD (default build-gpu)
#   2. every CUDA kernel against its CPU twin, the CUDA backend's expert chunk against float64
#      (DESIGN.md section 4 tolerances), and the GEMM rate check (expert chunks vs one cuBLAS
#      GEMM of the same total size, target >= 70 %)            tests/gpu/test-kernels.c
#   3. the engine on the CUDA backend against the CPU backend on the same inputs, with 4 and 8
#      logical devices on GPU 0 (and across GPUs when there are several), and the backend's
#      row exchange (dispatch gathers, combines) between logical devices
#                                                               tests/gpu/test-engine-cuda.c
#      Rows between logical devices on one GPU are device-to-device copies; only with two or
#      more GPUs does the NCCL dispatch path (grouped ncclSend/ncclRecv) run, compared there
#      with peer access (LLEP_CUDA_DISPATCH=peer) and with two logical devices on each of two
#      GPUs. The run says which path ran (paths.txt, and in the table).
#   4. llep-bench, gpt-oss-120b shape (D = H = 2880, N = 128, K = 4), all scenarios, EP vs LLEP,
#      on cuda:0x4 and cuda:0x8 (target: LLEP at >= 90 % of the ideal speedup in the 95 %
#      scenarios)
#   5. a cluster layer on the CUDA backend: three llepd nodes on loopback, two logical devices
#      each on GPU 0, clients on every node checked against float64, the steps' data between
#      nodes over the NCCL communicator once it is up (NCCL_HOSTID per node makes NCCL treat
#      the three processes on one GPU as three hosts)                 tests/gpu/cluster.sh
#   3b. the device cost model: llep-bench --calibrate on two logical devices of GPU 0 (and
#      one per GPU when there are several): curve and transfer figures (calibrate*.txt), and
#      the same as JSON (calibrate*.json: llep-plan --cost FILE, llep-plan-sweep --model FILE)
#   6. a whole model on shared devices: llepd on cuda:0x4 loads a checkpoint of several MoE
#      layers (BUILD/model, made by pack.sh with scripts/make-model.py) and four clients run
#      every layer in order, checked against the checkpoint's weights      tests/gpu/model.sh
#   7. a GPU-resident client (issue 17): x and y in a device space on GPU 0, y against float64
#      and the host arena path, time per forward at 1, 256, 4096 and 32768 tokens, host arena
#      vs device space (space.json)                                       tests/gpu/space.sh
# and prints a short table last. Full results go to $OUT when it is set (else to
# $BUILD/gpu-results): build and test logs, kernels.json, paths.txt, bench-cuda-0x4.json,
# bench-cuda-0x8.json, summary.txt.
#
# On a lent machine without the Debian packages llep builds against, build here with
# tests/gpu/pack.sh and run there with tests/gpu/lent.sh (it calls this script with
# --skip-build).
#
#   bash tests/gpu/run.sh [--dry-run] [--build-only] [--skip-build] [--tokens T] [--repeat R]
#                         [--budget SECONDS] [--build-dir DIR] [--self-test-cpu] [--help]
#
# --self-test-cpu runs the whole script where there is no GPU: the test programs with the CPU
# backend standing in for CUDA and llep-bench on the CPU backend at a small scale, to check the
# script itself (its steps, logs, JSON and table).
#
# Every step has its own time limit, and none runs past the whole run's budget (default 480 s).
#
# Exit status: 0 all checks passed (targets are reported, not enforced), 1 a check failed,
# 2 bad arguments, 3 no GPU visible, 4 the build failed, 124 a step ran out of time.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD:-build-gpu}
tokens=4096      # tokens per logical device (gpt-oss-120b's is 32768; scaled for the 8 minutes)
repeat=2
budget=480
selftest=0
dry=0
build_only=0
skip_build=0

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die_usage() {
    echo "run.sh: $*" >&2
    echo "run.sh: see --help" >&2
    exit 2
}

positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die_usage "$1 needs a positive integer, not '$2'"; }

while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) dry=1 ;;
    --self-test-cpu) selftest=1 ;;
    --build-only) build_only=1 ;;
    --skip-build) skip_build=1 ;;
    --tokens) [ $# -ge 2 ] || die_usage "--tokens needs a value"; positive --tokens "$2"; tokens=$2; shift ;;
    --repeat) [ $# -ge 2 ] || die_usage "--repeat needs a value"; positive --repeat "$2"; repeat=$2; shift ;;
    --budget) [ $# -ge 2 ] || die_usage "--budget needs a value"; positive --budget "$2"; budget=$2; shift ;;
    --build-dir) [ $# -ge 2 ] || die_usage "--build-dir needs a value"; build=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
    esac
    shift
done
[ $build_only = 1 ] && [ $skip_build = 1 ] && die_usage "--build-only and --skip-build exclude each other"

cd "$root"
case $build in /*) ;; *) build=$root/$build ;; esac
out=${OUT:-$build/gpu-results}
t_start=$(date +%s)
deadline=$((t_start + budget))

# The limit of a step: its own, or what is left of the run's budget if that is less.
limit_of() {
    local left=$((deadline - $(date +%s)))
    if [ "$left" -le 5 ]; then
        echo "run.sh: the run's budget of ${budget}s is spent; stopping before '$2'" >&2
        exit 124
    fi
    echo $(($1 < left ? $1 : left))
}

say() { printf '\n== %s (%ds)\n' "$*" $(( $(date +%s) - t_start )); }

# Runs a step under a time limit, its output also in a log under $out; in a dry run, prints it.
step() {
    local limit log=$2
    # A subshell's exit does not end the script, and errexit is off in `step ... || ...`.
    limit=$(limit_of "$1" "$3") || exit 124
    shift 2
    if [ $dry = 1 ]; then
        printf 'would run (limit %ss, log %s): %s\n' "$limit" "$log" "$*"
        return 0
    fi
    local rc=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$log" || rc=${PIPESTATUS[0]}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "run.sh: '$*' ran out of its ${limit}s; see $out/$log" >&2
        exit 124
    fi
    return "$rc"
}

say "llep GPU run: build $build, results $out, $tokens tokens per device, repeat $repeat"
[ $dry = 1 ] || mkdir -p "$out"

# ---- 0. what is here ----
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi
if [ $skip_build = 0 ] && ! command -v nvcc >/dev/null 2>&1; then
    echo "run.sh: nvcc not found (looked in PATH and /usr/local/cuda/bin): the CUDA toolkit is needed to build" >&2
    [ $dry = 1 ] || exit 4
fi
gpus=0
if [ $build_only = 0 ] && [ $selftest = 1 ]; then
    echo "run.sh: self-test: the CPU backend stands in for CUDA; no GPU figures come out of this" >&2
elif [ $build_only = 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "run.sh: nvidia-smi not found; assuming one GPU (the tests say so if there is none)" >&2
        gpus=1
    elif nvidia-smi -L >/dev/null 2>&1; then
        gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader |
            { [ $dry = 1 ] && cat || tee "$out/gpus.txt"; }
    fi
    if [ "$gpus" = 0 ]; then
        echo "run.sh: no GPU visible (nvidia-smi -L lists none): this run needs one; --build-only builds without" >&2
        [ $dry = 1 ] || exit 3
    fi
fi

# ---- 1. build ----
if [ $skip_build = 0 ]; then
    say "1. build with CUDA (release, -Dwerror=true)"
    opts=(-Dcuda=enabled -Dbuildtype=release -Dwerror=true)
    if [ -d "$build/meson-private" ]; then
        step 120 meson-setup.log meson setup --reconfigure "$build" "${opts[@]}" || exit 4
    else
        step 120 meson-setup.log meson setup "$build" "${opts[@]}" || exit 4
    fi
    step 300 build.log ninja -C "$build" tests/test-gpu-kernels tests/test-gpu-engine tools/llep-bench \
        daemon/llepd tools/llepctl tools/llep-demo tools/llep-model-run tests/test-gpu-space || exit 4
    # The checkpoint of step 6, where this machine can write one (pack.sh does it here).
    if [ ! -f "$build/model/config.json" ] && [ -x "$root/.venv/bin/python3" ]; then
        "$root/.venv/bin/python3" "$root/scripts/make-model.py" "$build/model" --layers 4 \
            --experts 8 --top-k 2 --hidden 256 --inter 256 --shard-mb 64 2>/dev/null || true
    fi
    if [ $dry = 0 ] && grep -q 'warning' "$out/build.log"; then
        echo "run.sh: the build printed warnings (see $out/build.log)" >&2
        exit 4
    fi
fi
[ $build_only = 1 ] && { say "built; --build-only stops here"; exit 0; }

for exe in tests/test-gpu-kernels tests/test-gpu-engine tools/llep-bench daemon/llepd tools/llepctl tools/llep-demo tools/llep-model-run tests/test-gpu-space; do
    if [ $dry = 0 ] && [ ! -x "$build/$exe" ]; then
        echo "run.sh: $build/$exe is missing; build first (without --skip-build)" >&2
        exit 4
    fi
done

failed=()
check() {  # name, then the step's arguments; a failure is noted and the run goes on
    local name=$1 rc=0
    shift
    step "$@" || rc=$?
    if [ "$rc" = 3 ] || [ "$rc" = 77 ]; then
        echo "run.sh: $name: no GPU visible to the test" >&2
        exit 3
    fi
    [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

# ---- 2. kernels ----
say "2. kernels against their CPU twins, expert chunk against float64, GEMM rate"
self_args=()
[ $selftest = 1 ] && self_args=(--self-test-cpu)
check kernels 150 kernels.log "$build/tests/test-gpu-kernels" --json "$out/kernels.json" "${self_args[@]}"

# ---- 3. engine ----
say "3. engine: CUDA backend against the CPU backend (cuda:0x4, cuda:0x8)"
engine_args=()
if [ "$gpus" -gt 1 ]; then
    engine_args=(--spec "cuda:$(seq -s, 0 $((gpus > 8 ? 7 : gpus - 1)))")
fi
check engine 150 engine.log "$build/tests/test-gpu-engine" "${engine_args[@]}" "${self_args[@]}"
# Which path moved rows between logical devices, for the table.
if [ $dry = 1 ]; then
    if [ "$gpus" -gt 1 ]; then
        echo "dispatch paths: would run NCCL and peer access across $gpus GPUs, device-to-device on one"
    else
        echo "dispatch paths: would run device-to-device on one GPU; NCCL needs two or more GPUs"
    fi
else
    { grep '^path ' "$out/engine.log" || echo "path      none reported (see engine.log)"; } |
        sed 's/^path *//' >"$out/paths.txt"
    if [ "$gpus" -le 1 ] && [ $selftest = 0 ]; then
        echo "one GPU: rows between logical devices went device-to-device; the NCCL dispatch path did NOT run (it needs two or more GPUs)" >>"$out/paths.txt"
    fi
    echo "dispatch paths:"
    sed 's/^/  /' "$out/paths.txt"
fi

# ---- 3b. calibration ----
# The device cost model (issue 15 item 1): chunk time against rows at D = H = 2880 bf16 and the
# copies between two logical devices of GPU 0 (and between GPUs when there are several).
say "3b. calibration: llep-bench --calibrate (curve and transfer figures)"
cal_backend=cuda
[ $selftest = 1 ] && cal_backend=cpu
cal_gpu=${CUDA_VISIBLE_DEVICES:-0}
CUDA_VISIBLE_DEVICES=${cal_gpu%%,*} check calibrate 60 calibrate.txt \
    "$build/tools/llep-bench" --calibrate --backend "$cal_backend" --devices 2
# The same measured again as JSON, alone in calibrate.json (stderr to the log), so the run
# brings back a file `llep-plan --cost` and `llep-plan-sweep --model` read.
to_json='exec "$@" > "$0"'
CUDA_VISIBLE_DEVICES=${cal_gpu%%,*} check calibrate-json 60 calibrate-json.log \
    bash -c "$to_json" "$out/calibrate.json" \
    "$build/tools/llep-bench" --calibrate --backend "$cal_backend" --devices 2 --json
if [ "$gpus" -gt 1 ]; then
    check calibrate-peers 60 calibrate-peers.txt \
        "$build/tools/llep-bench" --calibrate --backend cuda --devices "$gpus"
    check calibrate-peers-json 60 calibrate-peers-json.log \
        bash -c "$to_json" "$out/calibrate-peers.json" \
        "$build/tools/llep-bench" --calibrate --backend cuda --devices "$gpus" --json
fi

# ---- 4. bench ----
bench_args=(--backend cuda --scale 1 --tokens "$tokens" --repeat "$repeat")
[ $selftest = 1 ] && bench_args=(--backend cpu --scale 32 --tokens 256 --repeat 1)
# Only the first GPU: with CUDA_VISIBLE_DEVICES naming one GPU, --devices P is cuda:0xP.
first_gpu=${CUDA_VISIBLE_DEVICES:-0}
first_gpu=${first_gpu%%,*}
for p in 4 8; do
    say "4. llep-bench gpt-oss-120b, --backend cuda --devices $p (cuda:0x$p: one GPU, rows device-to-device), all scenarios"
    rc=0
    if [ $dry = 1 ]; then
        step 170 "bench-cuda-0x$p.log" "$build/tools/llep-bench" --devices "$p" \
            --preset gpt-oss-120b "${bench_args[@]}" --scenario all --json
    else
        blimit=$(limit_of 170 llep-bench) || exit 124
        CUDA_VISIBLE_DEVICES=$first_gpu timeout --kill-after=10 "$blimit" \
            "$build/tools/llep-bench" --devices "$p" --preset gpt-oss-120b "${bench_args[@]}" \
            --scenario all --json \
            >"$out/bench-cuda-0x$p.json" 2>"$out/bench-cuda-0x$p.log" || rc=$?
        tail -n 3 "$out/bench-cuda-0x$p.log"
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            echo "run.sh: llep-bench --devices $p ran out of its ${blimit}s; see $out/bench-cuda-0x$p.log" >&2
            exit 124
        fi
        [ "$rc" = 0 ] || failed+=("llep-bench cuda:0x$p (exit $rc)")
    fi
done

# ---- 5. cluster layer ----
say "5. cluster layer: three llepd nodes on loopback, cuda:0x2 each on GPU 0"
cluster_args=(cuda "cuda:0x2")
cluster_forwards=300
[ $selftest = 1 ] && { cluster_args=(cpu 2); cluster_forwards=12; }
FORWARDS=$cluster_forwards CUDA_VISIBLE_DEVICES=$first_gpu check cluster 120 cluster.log \
    bash "$here/cluster.sh" "$build" "${cluster_args[@]}"

# ---- 6. a model on shared devices ----
say "6. a whole model from a checkpoint on shared devices (cuda:0x4 on GPU 0)"
model_args=(cuda "cuda:0x4")
[ $selftest = 1 ] && model_args=(cpu 4)
if [ $dry = 0 ] && [ ! -f "$build/model/config.json" ]; then
    failed+=("model (no checkpoint in $build/model: run tests/gpu/pack.sh, or install-deps for .venv)")
else
    CUDA_VISIBLE_DEVICES=$first_gpu check model 120 model.log \
        bash "$here/model.sh" "$build" "$build/model" "${model_args[@]}"
fi

# ---- 7. a GPU-resident client ----
say "7. a client's device space on GPU 0: y against float64, host arena vs device space"
space_args=(cuda "cuda:0x4" --gpu 0 --tokens 1,256,4096,32768 --repeat 5)
[ $selftest = 1 ] && space_args=(cpu 4 --self-test-cpu --tokens 1,16 --repeat 2 --check-tokens 4)
CUDA_VISIBLE_DEVICES=$first_gpu check space 120 space.log \
    bash "$here/space.sh" "$build" "${space_args[@]}"
[ $dry = 0 ] && { grep '^{' "$out/space.log" >"$out/space.json" || true; }

[ $dry = 1 ] && { say "dry run: nothing was run"; exit 0; }

# ---- the short table ----
say "summary"
python3 "$here/summary.py" "$out" "${#failed[@]}" "${failed[@]}" | tee "$out/summary.txt"
echo "full results: $out"
[ ${#failed[@]} = 0 ]
