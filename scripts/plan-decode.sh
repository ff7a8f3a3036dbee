#!/usr/bin/env bash
# Plans at small (decode) batch sizes: the speedup bound over EP (EP's busiest device over the
# plan's) of the paper's LLA with m = 1024 and with --scale-min-tokens, for the gpt-oss-120b
# shape (N 128, P 8, K 4) and T tokens per device, every scenario of DESIGN.md section 7.
#
#   bash scripts/plan-decode.sh [T]        (LLEP_BUILD_DIR: a build with tools/llep-plan)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-256}
plan=${LLEP_BUILD_DIR:-build}/tools/llep-plan
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf '%-9s %9s %12s %14s\n' scenario ideal "m=1024" "m=1024 scaled"
for sc in 0:0 30:16 30:4 30:1 50:16 50:4 50:1 80:16 80:4 80:1 95:16 95:4 95:1; do
  x=${sc%:*} h=${sc#*:}
  name=$([ "$h" = 0 ] && echo balanced || echo "${x}%-${h}")
  awk -v n=128 -v s=$((8*T*4)) -v x="$x" -v h="$h" 'BEGIN { hot=(h>0)?int(s*x/100):0; cold=s-hot; c=n-h;
    for (e=0;e<n;e++) { if (e<h) v=int(hot/h)+(e<hot%h); else v=int(cold/c)+((e-h)<cold%c); printf "%d\n", v } }' > $tmp
  a=$($plan -d 8 --json -f $tmp | python3 -c 'import json,sys; p=json.load(sys.stdin); print(max(p["device_loads"]))')
  b=$($plan -d 8 -s --json -f $tmp | python3 -c 'import json,sys; p=json.load(sys.stdin); print(max(p["device_loads"]))')
  python3 - "$name" "$a" "$b" "$tmp" <<'PY'
import sys
loads=[int(w) for w in open(sys.argv[4]).read().split()]
ep=max(sum(loads[d*16:(d+1)*16]) for d in range(8)); mean=sum(loads)/8
name,a,b=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])
print(f"{name:<9} {ep/mean:8.2f}x {ep/a:11.2f}x {ep/b:13.2f}x")
PY
done
