#!/usr/bin/env python3
"""Turns the figures of tests/gpu/probe-costs.py --json (cuBLAS through PyTorch on a lent GPU)
into a calibration in the form `llep-bench --calibrate --json` prints, so that llep-plan
--cost FILE and llep-plan-sweep --model FILE can model 8 such GPUs with measured chunk and
copy figures where llepd's own calibration (tests/gpu/run.sh step 3b) has not run yet.

    python3 tests/gpu/probe-calib.py PROBE.json [--fixed-us 6] [--devices 8] > CALIB.json

The curve is made as daemon/engine/calibrate.c makes its own (make_curve): rate = rows x 6DH /
(chunk time - fixed cost), never falling as rows grow and never rising faster than the rows.
The probe measures no fixed cost per chunk (it times whole chunks), so it is a nominal figure
(--fixed-us, default the nominal H200 model's 6 us, kernel launches), capped at half the
1-row chunk as calibrate.c caps its own. Copies: the two device-to-device sizes give the same
GPU's latency and bytes per ns (a line through the two points). Between GPUs and between nodes
are not measured on one GPU: the nominal H200 model's figures (daemon/core/cost.c), raised to
at least the measured kind's, as calibrate.c does for kinds it could not measure.
"""
import argparse
import json
import sys

# daemon/core/cost.c, nominal_h200(): latency ns, ns per byte.
NOMINAL_PEER = (10000.0, 1.0 / 450.0)
NOMINAL_NODE = (20000.0, 1.0 / 50.0)


def curve(chunk, fpr, fixed_ns):
    pts = sorted(chunk, key=lambda c: c["rows"])
    if not pts or pts[0]["rows"] != 1:
        raise SystemExit("probe-calib: the chunk figures must start at 1 row")
    fixed = min(fixed_ns, 0.5 * pts[0]["ms"] * 1e6)
    out, prev = [], None
    for p in pts:
        t = p["ms"] * 1e6
        rate = p["rows"] * fpr / (t - fixed) if t > fixed else 0.0
        if prev:
            rate = max(rate, prev[1])
            rate = min(rate, prev[1] * p["rows"] / prev[0])
        if not rate > 0:
            raise SystemExit(f"probe-calib: the chunk of {p['rows']} rows gives no rate")
        out.append({"rows": p["rows"], "chunk_ns": fixed + p["rows"] * fpr / rate,
                    "rate_flops_per_ns": rate})
        prev = (p["rows"], rate)
    top = max(c["rate_flops_per_ns"] for c in out)
    for c in out:
        c["efficiency"] = c["rate_flops_per_ns"] / top
    return fixed, out


def same_gpu(copies):
    d2d = sorted((c for c in copies if c["kind"] == "d2d"), key=lambda c: c["bytes"])
    if len(d2d) < 2 or d2d[0]["bytes"] == d2d[-1]["bytes"]:
        raise SystemExit("probe-calib: two device-to-device copies of different sizes needed")
    a, b = d2d[0], d2d[-1]
    npb = max((b["ms"] - a["ms"]) * 1e6 / (b["bytes"] - a["bytes"]), 0.0)
    lat = max(a["ms"] * 1e6 - a["bytes"] * npb, 0.0)
    return lat, npb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("probe")
    ap.add_argument("--fixed-us", type=float, default=6.0)
    ap.add_argument("--devices", type=int, default=8)
    a = ap.parse_args()
    with open(a.probe) as f:
        p = json.load(f)
    fpr = 6.0 * p["d"] * p["h"]
    fixed, pts = curve(p["chunk"], fpr, a.fixed_us * 1e3)
    lat, npb = same_gpu(p["copies"])
    peer = (max(NOMINAL_PEER[0], lat), max(NOMINAL_PEER[1], npb))
    node = (max(NOMINAL_NODE[0], peer[0]), max(NOMINAL_NODE[1], peer[1]))
    links = [("same", 0.0, 0.0, True), ("gpu", lat, npb, True), ("peer", *peer, False),
             ("node", *node, False)]
    out = {"backend": "cuda", "device_name": f"{p['device']} (probe-costs.py)",
           "devices": a.devices, "hidden": p["d"], "inter": p["h"], "dtype": p["dtype"],
           "chunk_fixed_ns": fixed, "devices_per_gpu": 1, "devices_per_node": 0,
           "elapsed_ms": 0.0, "time": 0, "hash": "not computed: made by probe-calib.py",
           "curve": pts,
           "links": [{"kind": k, "latency_ns": l, "ns_per_byte": n, "measured": m}
                     for k, l, n, m in links]}
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
