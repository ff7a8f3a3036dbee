#!/usr/bin/env bash
# Persistent skew (issue 15): routing traces replayed through two engines on the CPU backend,
# replica cache off and on, with llep-bench --trace. Four runs: the drifting trace and the
# jumping one at llepd's default budget (native weights + 1 GiB per device, cache auto), and
# both again at a tight budget (BUDGET, default 11M per device: the 5.9 MiB of native weights,
# the largest step and a few experts' copies), where the cache must evict and shrink.
#
#   bash scripts/bench-trace.sh [--json]
#
# Environment: LLEP_BUILD_DIR (default build), STEPS (default 1000), TOKENS (default 256 per
# device), BUDGET, OUT (default a new temporary directory: each run's output and --json).
# Shape: gpt-oss-120b with D and H divided by 16 (N 128, K 4, D = H = 180), P 8; 80 % of the
# slots into 4 hot experts; LLA with the paper's alpha, lambda and m scaled like the tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${LLEP_BUILD_DIR:-build}/tools/llep-bench
steps=${STEPS:-1000} tokens=${TOKENS:-256} budget=${BUDGET:-11M}
out=${OUT:-$(mktemp -d /tmp/bench-trace.XXXXXX)}
fmt=
[ "${1:-}" = --json ] && fmt=--json
mkdir -p "$out"
[ -x "$bench" ] || { echo "bench-trace.sh: $bench not built" >&2; exit 2; }
common=(--preset gpt-oss-120b --scale 16 --tokens "$tokens" --scenario 80%-4 --steps "$steps")
for run in "drift default" "jump default" "drift $budget" "jump $budget"; do
  set -- $run
  mem=()
  [ "$2" != default ] && mem=(--device-memory "$2")
  f="$out/$1-$2"
  echo "== llep-bench ${common[*]} --trace $1 ${mem[*]} $fmt" >&2
  "$bench" "${common[@]}" --trace "$1" "${mem[@]}" $fmt > "$f.out" 2> "$f.log"
  echo "== $1, budget $2 (llep-bench ${common[*]} --trace $1 ${mem[*]} $fmt)"
  cat "$f.out"
done
