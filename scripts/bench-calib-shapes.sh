#!/usr/bin/env bash
# llepd's cost planner with the reference calibration against one at the layer's own shape
# (calibrate-shapes = no / yes; issue 15 item 1), on the CPU backend: llepd on DEVICES logical
# devices, a gpt-oss-120b / 16 layer (N 128, K 4, D = H = 180) driven by llep-demo (one
# client, policy llep, min-tokens 1, HOT of the token-slots on expert 0), TOKENS per forward,
# FORWARDS forwards; the layer's mean makespan (the largest device busy time of a step, its
# mean over the steps) and balance from `llepctl --json stats`. The two settings alternate,
# ROUNDS times, each with a new llepd and state directory; with yes a first layer of the shape
# starts its calibration and the measured layer is made once it is stored.
#
#   LLEP_BUILD_DIR=build-rel bash scripts/bench-calib-shapes.sh
#
# Environment: LLEP_BUILD_DIR (default build), DEVICES (16), TOKENS (16), HOT (0.95),
# FORWARDS (300), ROUNDS (5), REPLICA_CACHE (llepd's --replica-cache, default auto).
set -euo pipefail
cd "$(dirname "$0")/.."
b=${LLEP_BUILD_DIR:-build}
devices=${DEVICES:-16}; tokens=${TOKENS:-16}; hot=${HOT:-0.95}; fw=${FORWARDS:-300}
rounds=${ROUNDS:-5}; cache=${REPLICA_CACHE:-auto}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for shapes in no yes; do
    run=$(mktemp -d -p "$out"); sock=$run/s
    "$b/daemon/llepd" --socket "$sock" --backend cpu --devices "$devices" \
      --state-dir "$run/state" --calibrate-shapes "$shapes" --replica-cache "$cache" \
      --log-level info 2> "$run/log" &
    pid=$!
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    common=(--socket "$sock" --clients 1 --tokens "$tokens" --hot-share "$hot" --experts 128
            --top-k 4 --hidden 180 --inter 180 --min-tokens 1 --policy llep)
    "$b/tools/llep-demo" "${common[@]}" --layer warm --forwards 1 > /dev/null
    if [ "$shapes" = yes ]; then
      for _ in $(seq 400); do
        [ -f "$run/state/calibration-180x180-f32.json" ] && break; sleep 0.05
      done
    fi
    "$b/tools/llep-demo" "${common[@]}" --layer run --forwards "$fw" \
      --then "$b/tools/llepctl --socket $sock --json stats > $run/stats.json" > /dev/null
    python3 - "$run/stats.json" "$shapes" >> "$out/rows" <<'PY'
import json, sys
for l in json.load(open(sys.argv[1]))['layers']:
    if l['name'] == 'run':
        print(sys.argv[2], l['makespan_mean_us'], l['balance_mean'], l['weight_bytes_moved'])
PY
    kill "$pid"; wait "$pid" || true
  done
done
python3 - "$out/rows" "$devices" "$tokens" "$hot" "$cache" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"devices {sys.argv[2]}, {sys.argv[3]} tokens per forward, {float(sys.argv[4]):.0%} on "
      f"expert 0, replica cache {sys.argv[5]}")
for k in ('no', 'yes'):
    v = [r for r in rows if r[0] == k]
    ms = [int(r[1]) for r in v]
    print(f"  calibrate-shapes {k:3}: makespan us {ms}, median {st.median(ms):g}; balance median "
          f"{st.median(float(r[2]) for r in v):.3f}; weight MB moved median "
          f"{st.median(int(r[3]) for r in v) / 1e6:.1f}")
PY
