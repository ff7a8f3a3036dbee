#!/usr/bin/env python3
"""The short table of tests/gpu/run.sh: GEMM rate, and EP vs LLEP per scenario on cuda:0x4 and
cuda:0x8, from the JSON files the run wrote.

    summary.py OUT_DIR NUMBER_OF_FAILED_CHECKS [FAILED_CHECK...]
"""
import json, os, sys
out, nfail, failed = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
k = load("kernels.json") or []
for c in k:
    if c.get("check") == "gemm_rate":
        print("GEMM rate %4d experts x %5d rows: chunks %6.1f TFLOP/s, one GEMM %6.1f TFLOP/s, "
              "ratio %.2f (target 0.70: %s)" % (c["experts"], c["rows"], c["chunks_tflops"],
              c["one_gemm_tflops"], c["ratio"], "met" if c["ratio"] >= 0.70 else "MISSED"))
benches = {p: load("bench-cuda-0x%d.json" % p) for p in (4, 8)}
print()
for p, b in benches.items():
    if b:
        print("llep-bench cuda:0x%d: %s N %d D %d H %d K %d, %d tokens per device, %s, repeat %d, "
              "min_tokens %d" % (p, b["preset"], b["experts"], b["hidden"], b["inter"],
              b["top_k"], b["tokens_per_device"], b["dtype"], b["repeat"], b["min_tokens"]))
    else:
        print("llep-bench cuda:0x%d: no results" % p)
print("%-9s | %-36s | %-36s" % ("", "cuda:0x4", "cuda:0x8"))
print("%-9s | %8s %8s %6s %5s %5s | %8s %8s %6s %5s %5s" % ("scenario", "EP ms", "LLEP ms",
      "speed", "ideal", "%id", "EP ms", "LLEP ms", "speed", "ideal", "%id"))
names = []
for b in benches.values():
    if b:
        names = [s["scenario"] for s in b["scenarios"]]
        break
miss = []
for n in names:
    row = "%-9s |" % n
    for p, b in benches.items():
        s = next((s for s in b["scenarios"] if s["scenario"] == n), None) if b else None
        if not s:
            row += " %36s |" % "-"
            continue
        ep, ll = s["ep"]["makespan_ns"] / 1e6, s["llep"]["makespan_ns"] / 1e6
        pct = 100 * s["speedup"] / s["ideal"] if s["ideal"] > 0 else 0
        if n.startswith("95%") and pct < 90:
            miss.append("%s on cuda:0x%d: %.1f %% of ideal" % (n, p, pct))
        row += " %8.2f %8.2f %6.2f %5.2f %4.0f%% |" % (ep, ll, s["speedup"], s["ideal"], pct)
    print(row.rstrip("|"))
print()
print("LLEP >= 90 % of the ideal speedup in the 95 % scenarios: " +
      ("met" if names and not miss else "MISSED: " + "; ".join(miss) if miss else "no data"))
try:
    with open(os.path.join(out, "paths.txt")) as f:
        paths = [l.rstrip("\n") for l in f if l.strip()]
except OSError:
    paths = []
print("rows between logical devices (llep-bench: one GPU, device-to-device):")
for l in paths or ["not reported"]:
    print("  " + l)
print("checks: " + ("all passed" if nfail == 0 else "FAILED: " + ", ".join(failed)))
