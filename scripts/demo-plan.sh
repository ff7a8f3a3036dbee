#!/usr/bin/env bash
# Plans only: what Least-Loaded Assignment does on the paper's routing scenarios (DESIGN.md
# section 7) for the gpt-oss-120b shape: 128 experts on 8 devices, top-4, 32K tokens per
# device. Needs a build (scripts/demo.sh makes one); no daemon.
#
#   bash scripts/demo-plan.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build=${LLEP_BUILD_DIR:-build}

experts=128 devices=8 top_k=4 tokens=32768
slots=$((devices * tokens * top_k))
plan=("$build/tools/llep-plan" --devices "$devices")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

# Loads for "X % of all token-slots evenly into h hot experts (0..h-1), the rest evenly over
# the others"; balanced spreads everything evenly. Remainders go to the lowest ids.
loads() { # share_percent hot
  awk -v n="$experts" -v s="$slots" -v x="$1" -v h="$2" 'BEGIN {
    hot = (h > 0) ? int(s * x / 100) : 0; cold = s - hot; c = n - h
    for (e = 0; e < n; e++) {
      if (e < h) v = int(hot / h) + (e < hot % h)
      else       v = int(cold / c) + ((e - h) < cold % c)
      printf "%d\n", v
    }
  }'
}

echo "llep demo: ${experts} experts on ${devices} devices, top-${top_k}, ${tokens} tokens per device"
echo "(${slots} token-slots per step; alpha 1, lambda 1.3, min-tokens 1024)"
echo
printf '%-10s %-5s %9s %12s %12s %9s %9s %6s\n' scenario mode imbalance "EP max" "LLEP max" \
  "ideal" "achieved" xfers
for sc in 0:0 30:16 30:4 30:1 50:16 50:4 50:1 80:16 80:4 80:1 95:16 95:4 95:1; do
  x=${sc%:*} h=${sc#*:}
  name=$([ "$h" = 0 ] && echo balanced || echo "${x}%-${h}")
  loads "$x" "$h" > "$tmp"
  "${plan[@]}" --json --loads-file "$tmp" | python3 -c '
import json, sys
p = json.load(sys.stdin)
name, path, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
loads = [int(w) for w in open(path).read().split()]
per = len(loads) // devices
ep_max = max(sum(loads[d * per:(d + 1) * per]) for d in range(devices))
mean = sum(loads) / devices
imb, mode, xfers = p["imbalance"], p["mode"], len(p["transfers"])
mx = max(p["device_loads"])
print(f"{name:<10} {mode:<5} {imb:9.3f} {ep_max:12d} {mx:12d} "
      f"{ep_max / mean:8.2f}x {ep_max / mx:8.2f}x {xfers:6d}")
' "$name" "$tmp" "$devices"
done
cat <<'TXT'

ideal:    EP's busiest device / the mean, the speedup bound of perfect balance
achieved: EP's busiest device / this plan's busiest device (token-slots, not yet measured time)

The plan in full for 95 % of the token-slots into expert 0:
TXT
loads 95 1 | "${plan[@]}" --loads-file -
