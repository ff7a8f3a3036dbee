#!/usr/bin/env bash
# A GPU-resident client (run.sh step 7; issue 17): llepd on the CUDA backend, one client
# process with its x and y in a device space on GPU 0 (tests/gpu/test-space.c): y against
# float64 and against the host arena path bit for bit, and the time per forward at 1, 256,
# 4096 and 32768 tokens, host arena (x copied device -> host -> llepd, y back) vs device space.
# The JSON lines go to stdout (run.sh keeps them in space.log and space.json).
#
#   bash tests/gpu/space.sh BUILD [BACKEND DEVICES [TEST ARGS...]]   (default: cuda cuda:0x4)
set -euo pipefail
build=$1
backend=${2:-cuda}
devices=${3:-cuda:0x4}
shift $(( $# < 3 ? $# : 3 ))
run=$(mktemp -d)
sock="$run/llepd.sock"
trap 'kill "$daemon" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"' EXIT
"$build/daemon/llepd" --socket "$sock" --backend "$backend" --devices "$devices" \
    --log-level info 2> "$run/llepd.log" &
daemon=$!
for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.05; done
rc=0
"$build/tests/test-gpu-space" --socket "$sock" "$@" || rc=$?
kill -TERM "$daemon"
wait "$daemon" || { echo "space.sh: llepd did not stop cleanly" >&2; rc=1; }
[ "$rc" = 0 ] || { echo "space.sh: llepd's log:" >&2; tail -n 30 "$run/llepd.log" >&2; }
exit $rc
