#!/usr/bin/env bash
# A whole model on the GPU (run.sh step 6): one llepd on the CUDA backend loads a gpt-oss style
# checkpoint of several MoE layers (bf16) onto shared devices, and four client processes run
# every layer in order, each checking every layer against the same weights read from the
# checkpoint and created by the client (llep-model-run --check exits 1 on a mismatch). Prints
# the load time, llepd's thread count with the model loaded (one backend for all layers), and
# llepctl models / devices / stats.
#
#   bash tests/gpu/model.sh BUILD CHECKPOINT [BACKEND DEVICES]   (default: cuda cuda:0x4)
#
# CHECKPOINT is a directory scripts/make-model.py wrote (tests/gpu/pack.sh makes
# BUILD/model, since the GPU machine may have no numpy or safetensors).
set -euo pipefail
build=$1
ckpt=$2
backend=${3:-cuda}
devices=${4:-cuda:0x4}
run=$(mktemp -d)
sock="$run/llepd.sock"
ctl=("$build/tools/llepctl" --socket "$sock")
trap 'kill "$daemon" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"' EXIT
[ -f "$ckpt/config.json" ] || { echo "model.sh: no checkpoint in $ckpt" >&2; exit 2; }
"$build/daemon/llepd" --socket "$sock" --backend "$backend" --devices "$devices" \
    --min-tokens 64 --log-level info 2> "$run/llepd.log" &
daemon=$!
for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.05; done
"${ctl[@]}" load m "$ckpt" || { cat "$run/llepd.log" >&2; exit 1; }
echo "llepd threads with the model loaded: $(ls "/proc/$daemon/task" | wc -l)"
"${ctl[@]}" models
rc=0
"$build/tools/llep-model-run" --socket "$sock" --model m --clients 4 --forwards 4 \
    --tokens 512 --hot-share 0.8 --check "$ckpt" || rc=$?
"${ctl[@]}" devices
"${ctl[@]}" stats | sed -n '/^ID/,$p'
kill -TERM "$daemon"
wait "$daemon" || { echo "model.sh: llepd did not stop cleanly; its log:" >&2; cat "$run/llepd.log" >&2; rc=1; }
exit $rc
