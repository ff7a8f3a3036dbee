#!/usr/bin/env bash
# Step latency of a cluster layer against a node-scope layer on the same devices, on this
# machine: three llepd nodes on loopback (two CPU devices each) and one llepd with six devices.
# The same llep-demo workload runs on each (70 % of the token-slots to expert 0, policy llep).
#
#   bash scripts/bench-cluster-latency.sh [TOKENS [FORWARDS [CLIENTS]]]   (defaults 1 500 1)
#   LLEP_BUILD_DIR=build-rel to use a build other than build (built already)
#   LLEP_XNODE=1 to give the cluster layer its communicator between nodes (the CPU backend's
#   socket transport, llepd's test hook LLEPD_TEST_XNODE): the steps' data then bypasses the
#   peer links once it is up (after the first steps)
set -euo pipefail
cd "$(dirname "$0")/.."
b=${LLEP_BUILD_DIR:-build}
tokens=${1:-1}; forwards=${2:-500}; clients=${3:-1}
run=$(mktemp -d); base=$((21000 + RANDOM % 8000))
peers="0=127.0.0.1:$base,1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2))"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT
for n in 0 1 2; do
  LLEPD_TEST_XNODE=${LLEP_XNODE:-0} \
  "$b/daemon/llepd" --socket "$run/node$n.sock" --backend cpu --devices 2 --node-id "$n" \
    --peers "$peers" --log-level warning 2> "$run/log$n" &
  pids+=($!)
done
"$b/daemon/llepd" --socket "$run/single.sock" --backend cpu --devices 6 --log-level warning \
  2> "$run/log-single" &
pids+=($!)
for n in 0 1 2; do
  for i in $(seq 400); do
    [ "$("$b/tools/llepctl" --socket "$run/node$n.sock" peers 2>/dev/null | grep -cw up)" -ge 2 ] && break
    [ "$i" -lt 400 ] || { echo "node $n: peers not up" >&2; exit 1; }
    sleep 0.05
  done
done
for i in $(seq 200); do [ -S "$run/single.sock" ] && break; sleep 0.05; done
work=(--clients "$clients" --forwards "$forwards" --tokens "$tokens" --hot-share 0.7
      --experts 24 --top-k 4 --hidden 256 --inter 256 --min-tokens 1 --policy llep)
echo "cluster layer: 3 nodes x 2 devices, clients spread over the nodes"
"$b/tools/llep-demo" --socket "$run/node0.sock" --scope cluster --layer c \
  --client-socket "$run/node0.sock" --client-socket "$run/node1.sock" \
  --client-socket "$run/node2.sock" "${work[@]}"
echo "node-scope layer: one llepd with 6 devices"
"$b/tools/llep-demo" --socket "$run/single.sock" --layer s "${work[@]}"
