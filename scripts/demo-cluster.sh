#!/usr/bin/env bash
# A cluster on one machine: three llepd nodes on loopback (CPU backend, two devices each) form
# one expert-parallel group. A client on node 0 creates cluster-scope layers (EP, then LLEP)
# over all six devices; client processes on every node share them under skewed routing and
# check their outputs against a float64 reference. Then each node's `llepctl layers` shows the
# token rows and expert weights it sent to the other nodes, and `llepctl plan` the last plan:
# spills stay on the hot expert's node while it has room (hierarchical placement).
#
#   bash scripts/demo-cluster.sh   (LLEP_BUILD_DIR=dir to build elsewhere than build)
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(bash scripts/build-release.sh | tail -1)

run=$(mktemp -d)
base=$((21000 + RANDOM % 8000))
peers="0=127.0.0.1:$base,1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2))"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
for n in 0 1 2; do
  "$build/daemon/llepd" --socket "$run/node$n.sock" --backend cpu --devices 2 --node-id "$n" \
    --peers "$peers" --log-level notice 2> "$run/node$n.log" &
  pids+=($!)
done
ctl() { "$build/tools/llepctl" --socket "$run/node$1.sock" "${@:2}"; }
# Every node sees both others up (one line per peer, state "up").
for n in 0 1 2; do
  for i in $(seq 400); do
    [ "$(ctl "$n" peers 2>/dev/null | grep -cw up)" -ge 2 ] && break
    [ "$i" -lt 400 ] || { echo "node $n: peers not up; its log:"; cat "$run/node$n.log"; exit 1; }
    sleep 0.05
  done
done
ctl 0 peers
echo

# 6 processes (2 per node) x 8 forwards of 512 tokens, 70 % of the token-slots to expert 0, on
# 24 experts (K 4, D 256, H 256) over 3 nodes x 2 devices.
"$build/tools/llep-demo" --socket "$run/node0.sock" --scope cluster --compare --layer moe \
  --client-socket "$run/node0.sock" --client-socket "$run/node1.sock" \
  --client-socket "$run/node2.sock" --clients 6 --forwards 8 --tokens 512 --hot-share 0.7 \
  --experts 24 --top-k 4 --hidden 256 --inter 256 --min-tokens 32 --check \
  --then "for n in 0 1 2; do echo; echo \"node \$n:\"; $build/tools/llepctl --socket $run/node\$n.sock layers; done; echo; echo 'node 0 (makespans are of its own two devices):'; $build/tools/llepctl --socket $run/node0.sock stats; echo; $build/tools/llepctl --socket $run/node0.sock plan moe-llep"

for p in "${pids[@]}"; do kill -TERM "$p"; done
wait
echo "llepd nodes stopped"
trap - EXIT
rm -rf "$run"
