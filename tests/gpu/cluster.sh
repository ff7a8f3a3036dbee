#!/usr/bin/env bash
# A cluster layer on the GPU (run.sh step 5): three llepd nodes on loopback, each with two
# logical devices on one GPU (cuda:0x2 by default), share cluster-scope layers (EP, then
# LLEP) under skewed routing; six clients, two per node, check their first and last outputs
# against a float64 reference (llep-demo --check exits 1 on a mismatch). The first steps cross
# the nodes over the peer links (TCP through host memory); once the layer's communicator is
# up, over it: NCCL on the CUDA backend, where NCCL_HOSTID differs per node so that NCCL takes
# the three processes on one GPU for three hosts and connects them with its socket transport
# over loopback; the CPU backend's socket transport under LLEPD_TEST_XNODE=1. The script
# fails unless the communicator carried steps of every layer and every client's last forward
# (over it) matches float64 too.
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
    NCCL_HOSTID="llep-cluster-test-node-$n" NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 \
        LLEPD_TEST_XNODE=1 \
        "$build/daemon/llepd" --socket "$run/node$n.sock" --backend "$backend" --devices "$devices" \
        --node-id "$n" --peers "$peers" --log-level info 2> "$run/node$n.log" &
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
    --client-socket "$run/node2.sock" --clients 6 --forwards "${FORWARDS:-300}" --tokens 512 \
    --hot-share 0.7 --experts 24 --top-k 4 --hidden 512 --inter 512 --min-tokens 32 --check \
    --then "$build/tools/llepctl --socket $run/node0.sock layers;
            $build/tools/llepctl --socket $run/node0.sock --json layers > $run/layers.json" || rc=$?
# Both layers (EP and LLEP) must have run steps over the communicator.
if [ "$rc" = 0 ]; then
    over=$(grep -o '"communicator_steps": [0-9]*' "$run/layers.json" | awk '$2 > 0' | wc -l)
    want=socket; [ "$backend" = cuda ] && want=nccl
    up=$(grep -c "\"internode_transport\": \"$want (up" "$run/layers.json" || true)
    if [ "$over" -lt 2 ] || [ "$up" -lt 1 ]; then
        echo "cluster.sh: the $want communicator between nodes is not up, or carried no step" \
             "of $((2 - over)) layer(s):" >&2
        grep -o '"internode_transport": "[^"]*"' "$run/layers.json" >&2 || true
        rc=1
    else
        grep -o '"communicator_steps": [0-9]*\|"internode_transport": "[^"]*"' "$run/layers.json"
    fi
fi
if [ "$rc" != 0 ]; then
    for n in 0 1 2; do echo "--- node $n log:"; cat "$run/node$n.log"; done >&2
fi
exit "$rc"
