#!/usr/bin/env bash
# A bounded soak of llepd (not run in CI): C client processes (default 16) hammer one llepd on
# the CPU backend, release build, for M minutes (default 10), each one llep-demo run after
# another with a random layer shape (experts, top-k, hidden, inter), routing skew (hot share),
# token count, forward count and policy, every run checked against the float64 reference
# (llep-demo --check: its first and last forwards). Every run creates its own layer and drops
# it at the end, so layers, sessions and arenas come and go the whole time.
#
#   scripts/soak.sh [--minutes M] [--clients C] [--devices P] [--seed S] [--build DIR]
#
# Figures of llepd, idle with no client, at three points: "before" (just started), "start"
# (after a warm-up of a tenth of the time, at most a minute, once its clients are gone) and
# "end" (after the soak, once its clients are gone): RSS and open descriptors from /proc, the
# p99 step latency of the most recent steps (llepctl stats --json: up to 4096 steps, so at
# "start" the warm-up's and at "end" the soak's last), and from the metrics endpoint the
# devices' memory in use and the errors by kind. Every 30 s a line of RSS and descriptors
# while the clients run goes to samples.tsv in the work directory.
#
# Verdict: FAIL when a run failed or mismatched the reference, when descriptors at "end"
# differ from "start" (a leak: every client has gone), when layers, clients or device memory
# remain at "end", or when RSS grew from "start" to "end" by more than 25% (the allocator keeps
# freed memory, and which shapes ran last changes what it keeps: smaller growth is noise).
# Prints the figures and the verdict; exit 0 on PASS, 1 on FAIL, 2 on a usage error. The work
# directory (llepd's log, every failed run's output) is kept on FAIL and removed on PASS.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10 clients=16 devices=4 seed=$$ build=""
usage() {
  sed -n '/^#   scripts/p' "$0" | sed 's/^#   /usage: /'
}
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:-}; shift 2 || true ;;
    --clients) clients=${2:-}; shift 2 || true ;;
    --devices) devices=${2:-}; shift 2 || true ;;
    --seed) seed=${2:-}; shift 2 || true ;;
    --build) build=${2:-}; shift 2 || true ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for v in minutes clients devices seed; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || { [ "$v" != seed ] && [ "${!v}" -eq 0 ]; }; then
    echo "soak: --$v needs a positive whole number, not '${!v}'" >&2
    exit 2
  fi
done
[ -n "$build" ] || build=$(bash scripts/build-release.sh | tail -1)
llepd=$build/daemon/llepd llepctl=$build/tools/llepctl demo=$build/tools/llep-demo
for p in "$llepd" "$llepctl" "$demo"; do
  [ -x "$p" ] || { echo "soak: no $p (build it, or name the build with --build)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/llep-soak.XXXXXX)
sock=$work/llepd.sock
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
lpid="" slot_pids=()
cleanup() {
  for p in "${slot_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -z "$lpid" ] || kill "$lpid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$llepd" --socket "$sock" --backend cpu --devices "$devices" --log-level notice \
  --metrics-listen "127.0.0.1:$port" >"$work/llepd.log" 2>&1 &
lpid=$!
for _ in $(seq 100); do
  "$llepctl" --socket "$sock" stats >/dev/null 2>&1 && break
  sleep 0.1
done
"$llepctl" --socket "$sock" stats >/dev/null || { echo "soak: llepd did not start:" >&2;
                                                   cat "$work/llepd.log" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$lpid/status"; }
fds() { ls "/proc/$lpid/fd" | wc -l; }
# One metric's value summed over its series (the metrics endpoint); 0 when absent.
metric() {
  curl -sf --max-time 10 "http://127.0.0.1:$port/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
p99_us() {
  "$llepctl" --socket "$sock" --json stats |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("latency_p99_us", 0))'
}
# The figures at one point, as name=value words, into $work/point-NAME.
point() {
  local name=$1 f="$work/point-$1"
  {   # llepctl last: its own connection is gone from the figures before it
    echo "rss_kib=$(rss_kib)"
    echo "fds=$(fds)"
    echo "steps=$(metric llep_node_steps_total)"
    echo "layers=$(metric llep_layers)"
    echo "clients=$(metric llep_clients_connected)"
    echo "device_used=$(metric llep_device_memory_used_bytes)"
    echo "errors=$(metric llep_errors_total)"
    echo "p99_us=$(p99_us)"
  } >"$f"
  echo "$name: $(tr '\n' ' ' <"$f")"
}
get() { sed -n "s/^$2=//p" "$work/point-$1"; }
# Waits until every client's session and layer has gone.
wait_idle() {
  for _ in $(seq 100); do
    [ "$(metric llep_clients_connected)" -eq 0 ] && [ "$(metric llep_layers)" -eq 0 ] && return
    sleep 0.1
  done
}

# pick VAR CHOICE...: one of the choices into VAR (no subshell: $RANDOM's sequence is the slot's).
pick() { local -n out=$1; shift; local a=("$@"); out=${a[RANDOM % ${#a[@]}]}; }
# One client slot: llep-demo runs with random shapes until the deadline; counts in slot-N.
slot() {
  local id=$1 end=$2 i=0 ok=0 bad=0
  RANDOM=$((seed * 31 + id))
  while [ "$(date +%s)" -lt "$end" ]; do
    local n k d h t x f pol
    pick n 4 8 16 32; pick k 1 2 4; pick d 32 64 128 256; pick h 32 64 128 256
    pick t 1 7 64 256 1000 2048; pick x 0 0.3 0.6 0.9 1; pick pol auto ep llep
    f=$((1 + RANDOM % 20))
    [ "$k" -le "$n" ] || k=$n
    local args=(--socket "$sock" --layer "soak-$id-$i" --clients 1 --forwards "$f"
                --tokens "$t" --hot-share "$x" --experts "$n" --top-k "$k" --hidden "$d"
                --inter "$h" --policy "$pol" --check)
    if "$demo" "${args[@]}" >"$work/run-$id.out" 2>&1; then
      ok=$((ok + 1))
    else
      bad=$((bad + 1))
      { echo "== slot $id run $i: llep-demo ${args[*]}"; cat "$work/run-$id.out"; } \
        >>"$work/failures"
    fi
    i=$((i + 1))
  done
  echo "$ok $bad" >"$work/slot-$id"
}
# C slots until the deadline, sampling every 30 s; waits for their last runs.
run_phase() {
  local secs=$1 end=$(( $(date +%s) + $1 )) next
  slot_pids=()
  for c in $(seq "$clients"); do
    slot "$c" "$end" &
    slot_pids+=($!)
  done
  next=$(( $(date +%s) + 30 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep 1
    if [ "$(date +%s)" -ge "$next" ]; then
      printf '%s\t%s\t%s\n' "$(date +%s)" "$(rss_kib)" "$(fds)" >>"$work/samples.tsv"
      next=$((next + 30))
    fi
  done
  wait "${slot_pids[@]}"
  slot_pids=()
  wait_idle
}

total=$((minutes * 60))
warm=$((total / 10))
[ "$warm" -le 60 ] || warm=60
echo "soak: llepd (pid $lpid, $devices CPU devices, $build), $clients clients, ${minutes} min" \
     "(warm-up ${warm} s), seed $seed, work directory $work"
printf 'time\trss_kib\tfds\n' >"$work/samples.tsv"
point before
run_phase "$warm"
point start
run_phase $((total - warm))
point end

runs=0 bad=0
for s in "$work"/slot-*; do
  read -r o b <"$s"
  runs=$((runs + o + b)) bad=$((bad + b))
done
rs=$(get start rss_kib) re=$(get end rss_kib)
growth=$(( (re - rs) * 100 / rs ))
verdict=PASS why=()
[ "$bad" -eq 0 ] || why+=("$bad of $runs runs failed (see $work/failures)")
[ "$(get end fds)" -eq "$(get start fds)" ] ||
  why+=("descriptors $(get start fds) -> $(get end fds)")
[ "$(get end layers)" -eq 0 ] || why+=("$(get end layers) layers left")
[ "$(get end clients)" -eq 0 ] || why+=("$(get end clients) connections left")
[ "$(get end device_used)" -eq 0 ] || why+=("$(get end device_used) bytes of device memory left")
[ "$growth" -le 25 ] || why+=("RSS grew ${growth}%")
[ ${#why[@]} -eq 0 ] || verdict=FAIL
echo
printf '%-7s %10s %5s %12s %9s\n' point "RSS MiB" fds "p99 step us" steps
for p in before start end; do
  printf '%-7s %10s %5d %12d %9d\n' "$p" "$(awk -v k="$(get "$p" rss_kib)" 'BEGIN {
    printf "%.1f", k / 1024 }')" "$(get "$p" fds)" "$(get "$p" p99_us)" "$(get "$p" steps)"
done
echo "runs: $runs (each a layer created, 1-20 forwards checked, the layer dropped), $bad failed"
awk -F'\t' 'NR > 1 { n++; r = $2 / 1024; lo = (n == 1 || r < lo) ? r : lo; hi = r > hi ? r : hi
                     f = $3 > f ? $3 : f }
  END { if (n) printf "while running (%d samples, every 30 s): RSS %.1f to %.1f MiB, at most %d" \
                      " descriptors\n", n, lo, hi, f }' "$work/samples.tsv"
echo "RSS start -> end: ${growth}%; descriptors $(get start fds) -> $(get end fds);" \
     "errors by kind at end: $(get end errors) in all"
reasons=$(IFS=';'; echo "${why[*]:-}")
echo "verdict: $verdict${reasons:+: ${reasons//;/; }}"
if [ "$verdict" = PASS ]; then
  rm -rf "$work"
  exit 0
fi
echo "kept $work"
exit 1
