#!/usr/bin/env bash
# A whole model in one llepd: a checkpoint of the gpt-oss-120b shape scaled for the CPU (36 MoE
# layers of 128 experts, top-4; D = H = 256 instead of 2880), loaded by llepd from the page
# cache. Prints the load time and rate, llepd's threads and resident memory with the model
# loaded, the 1-token round trip per layer through all 36 layers against a model of one layer,
# and the latency of the first and the last layer at 256 tokens with 4 clients.
#
#   bash scripts/bench-model.sh [--json]
#       LLEP_BUILD_DIR (default build-rel, release), LAYERS, EXPERTS, HIDDEN, INTER, DEVICES
set -euo pipefail
cd "$(dirname "$0")/.."

json=0
[ "${1:-}" = "--json" ] && json=1
build=${LLEP_BUILD_DIR:-build-rel}
layers=${LAYERS:-36} experts=${EXPERTS:-128} hidden=${HIDDEN:-256} inter=${INTER:-256}
devices=${DEVICES:-8}
[ -d "$build/meson-private" ] || meson setup "$build" -Dbuildtype=release >/dev/null
ninja -C "$build" >/dev/null
run=$(mktemp -d)
sock="$run/llepd.sock"
ctl=("$build/tools/llepctl" --socket "$sock")
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$run"' EXIT

say() { echo "bench-model: $*" >&2; }
say "writing the checkpoints ($layers layers, and 1 layer) ..."
.venv/bin/python3 scripts/make-model.py "$run/model" --layers "$layers" --experts "$experts" \
  --top-k 4 --hidden "$hidden" --inter "$inter" 2>/dev/null
.venv/bin/python3 scripts/make-model.py "$run/one" --layers 1 --experts "$experts" \
  --top-k 4 --hidden "$hidden" --inter "$inter" 2>/dev/null
cat "$run"/model/*.safetensors "$run"/one/*.safetensors > /dev/null   # into the page cache

"$build/daemon/llepd" --socket "$sock" --backend cpu --devices "$devices" --min-tokens 64 \
  --log-level warning 2> "$run/llepd.log" &
daemon=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
threads_before=$(ls "/proc/$daemon/task" | wc -l)

field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
say "loading ..."
load=$("${ctl[@]}" --json load big "$run/model")
"${ctl[@]}" --json load one "$run/one" > /dev/null
load_us=$(echo "$load" | field '["load_us"]')
bytes=$(echo "$load" | field '["weight_bytes"]')
threads=$(ls "/proc/$daemon/task" | wc -l)
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon/status")

mr() { "$build/tools/llep-model-run" --socket "$sock" --json "$@"; }
mean() { python3 -c "
import json,sys
rows=[json.loads(l) for l in sys.stdin if l.strip()]
print('%.4f' % (sum(r['$1'] for r in rows)/len(rows)))"; }
say "1-token round trips ..."
rt_big=$(mr --model big --clients 1 --forwards 20 --tokens 1 | mean mean_layer_ms)
rt_one=$(mr --model one --clients 1 --forwards 200 --tokens 1 | mean mean_layer_ms)
say "256 tokens, 4 clients ..."
out=$(mr --model big --clients 4 --forwards 3 --tokens 256 --hot-share 0.8)
first=$(echo "$out" | mean first_layer_ms)
last=$(echo "$out" | mean last_layer_ms)

if [ $json = 1 ]; then
  printf '{"layers": %s, "experts": %s, "hidden": %s, "inter": %s, "devices": %s, ' \
    "$layers" "$experts" "$hidden" "$inter" "$devices"
  printf '"weight_bytes": %s, "load_us": %s, "threads_before": %s, "threads": %s, ' \
    "$bytes" "$load_us" "$threads_before" "$threads"
  printf '"rss_kb": %s, "rt_1tok_layer_ms": %s, "rt_1tok_single_ms": %s, ' \
    "$rss_kb" "$rt_big" "$rt_one"
  printf '"first_layer_ms_256": %s, "last_layer_ms_256": %s}\n' "$first" "$last"
else
  python3 - "$layers" "$experts" "$hidden" "$inter" "$devices" "$bytes" "$load_us" \
    "$threads_before" "$threads" "$rss_kb" "$rt_big" "$rt_one" "$first" "$last" <<'EOF'
import sys
(L, N, D, H, P, b, us, tb, t, rss, rt, rt1, first, last) = sys.argv[1:]
b, us = int(b), int(us)
print(f"model: {L} MoE layers x {N} experts, top-4, D {D}, H {H}, bf16, on {P} CPU devices")
print(f"  load from the page cache   {us/1e6:8.2f} s   {b/2**20:9.1f} MiB   "
      f"{b/2**20/(us/1e6):8.1f} MiB/s")
print(f"  llepd threads              {tb} before the load, {t} with {int(L)+1} layers loaded")
print(f"  llepd resident memory      {int(rss)/1024:8.1f} MiB")
print(f"  1-token round trip/layer   {float(rt):8.3f} ms through {L} layers, "
      f"{float(rt1):.3f} ms with one layer")
print(f"  256 tokens, 4 clients      first layer {float(first):.2f} ms, last layer "
      f"{float(last):.2f} ms")
EOF
fi
"${ctl[@]}" unload big > /dev/null
kill -TERM "$daemon"
wait "$daemon" || true
