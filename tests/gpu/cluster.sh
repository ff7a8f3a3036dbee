#!/usr/bin/env bash
# A cluster layer on the GPU (run.sh step 5): three llepd nodes on loopback, each with two
# logical devices on one GPU (cuda:0x2 by default), share cluster-scope layers (EP, then
# LLEP) under skewed routing; six clients, two per node, check their first output against a
# float64 reference (llep-demo --check exits 1 on a mismatch). Rows, results and spilled
# weights cross the nodes through host memory over TCP.
#
#   bash tests/gpu/cluster.sh BUILD [BACKEND DEVICES]     (default: cuda cuda:0x2)
set -euo pipefail
build=$1
backend=${2:-cuda}
devices=${3:-cuda:0x2}
run=$(mktemp -d)
base=$((21000 + RANDOM % 8000))
peers="0=127.0.0.1:$base,1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2))"
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
for n in 0 1 2; do
    "$build/daemon/llepd" --socket "$run/node$n.sock" --backend "$backend" --devices "$devices" \
        --node-id "$n" --peers "$peers" --log-level notice 2> "$run/node$n.log" &
    pids+=($!)
done
for n in 0 1 2; do
    for i in $(seq 600); do
        [ "$("$build/tools/llepctl" --socket "$run/node$n.sock" peers 2>/dev/null | grep -cw up)" -ge 2 ] && break
        if [ "$i" = 600 ]; then
            echo "cluster.sh: node $n: peers not up within 30 s; its log:" >&2
            cat "$run/node$n.log" >&2
            exit 1
        fi
        sleep 0.05
    done
done
rc=0
"$build/tools/llep-demo" --socket "$run/node0.sock" --scope cluster --compare --layer moe \
    --client-socket "$run/node0.sock" --client-socket "$run/node1.sock" \
    --client-socket "$run/node2.sock" --clients 6 --forwards 4 --tokens 512 --hot-share 0.7 \
    --experts 24 --top-k 4 --hidden 512 --inter 512 --min-tokens 32 --check \
    --then "$build/tools/llepctl --socket $run/node0.sock layers" || rc=$?
if [ "$rc" != 0 ]; then
    for n in 0 1 2; do echo "--- node $n log:"; cat "$run/node$n.log"; done >&2
fi
exit "$rc"
