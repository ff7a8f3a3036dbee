#!/usr/bin/env bash
# The main job: installs what is missing, builds llep (release), starts llepd on the CPU
# backend, and runs a demo in which several client processes share one MoE layer under skewed
# routing, first with policy EP and then with LLEP; prints the daemon's EP vs LLEP figures
# (llepctl stats) and the last LLEP plan; then llepd loads a small model from a checkpoint and
# four client processes run all its layers in order; then it stops the daemon.
#
#   bash scripts/demo.sh          (LLEP_BUILD_DIR=dir to build elsewhere than build)
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(bash scripts/build-release.sh | tail -1)

devices=4
run=$(mktemp -d)
sock="$run/llepd.sock"
llepctl=("$build/tools/llepctl" --socket "$sock")
"$build/daemon/llepd" --socket "$sock" --backend cpu --devices "$devices" --log-level notice \
  2> "$run/llepd.log" &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
"${llepctl[@]}" status
echo

# 4 processes x 12 forwards of 1024 tokens, 80 % of the token-slots to expert 0, on a layer of
# 32 experts (K 4, D 512, H 512); min-tokens scaled to the small batches. Each client checks
# its first output against a float64 reference.
"$build/tools/llep-demo" --socket "$sock" --compare --layer demo --clients 4 --forwards 12 \
  --tokens 1024 --hot-share 0.8 --experts 32 --top-k 4 --hidden 512 --inter 512 \
  --min-tokens 64 --check \
  --then "echo; ${llepctl[*]} stats; echo; ${llepctl[*]} devices; echo; ${llepctl[*]} plan demo-llep"

# A whole model: a checkpoint of 6 MoE layers (gpt-oss layout, bf16, random weights) written
# by the safetensors package, loaded by llepd itself; 4 client processes attach to its layers
# by name and run all of them in order, as a model's forward does, each checking every layer
# against the same weights read from the checkpoint and created by the client.
echo
echo "== a model loaded from a checkpoint by llepd"
.venv/bin/python3 scripts/make-model.py "$run/model" --layers 6 --experts 32 --top-k 4 \
  --hidden 256 --inter 256 --shard-mb 16
"${llepctl[@]}" load demo-model "$run/model"
"${llepctl[@]}" models
"$build/tools/llep-model-run" --socket "$sock" --model demo-model --clients 4 --forwards 4 \
  --tokens 256 --hot-share 0.8 --check "$run/model"
echo
"${llepctl[@]}" stats | sed -n '/^ID/,$p'

echo
echo "Busy times are per-device CPU time (thread CPU clock): on a CPU the $devices logical"
echo "devices share this machine's $(nproc) cores, so compare makespans, not wall time."
kill -TERM "$daemon"
wait "$daemon"
echo "llepd stopped (exit $?)"
trap - EXIT
rm -rf "$run"
