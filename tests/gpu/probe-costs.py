#!/usr/bin/env python3
"""Figures of a lent GPU that a cost model of expert chunks and weight transfers needs, read
with PyTorch (cuBLAS) rather than llep's own backend: the time of one expert chunk (x Wg,
x Wu, SwiGLU, h Wd) against its row count at a layer shape, and copy bandwidths (device to
device, pinned host to device) for an expert's weight bytes. Times are medians of CUDA-event
timed repeats after warm-up, on random data.

    python3 tests/gpu/probe-costs.py [--d 2880] [--h 2880] [--dtype bf16] [--json FILE]
"""
import argparse
import json
import sys

import torch


def median_ms(fn, reps=50, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=2880)
    ap.add_argument("--h", type=int, default=2880)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("probe-costs: no GPU visible", file=sys.stderr)
        return 3
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = torch.device("cuda:0")
    g = torch.Generator(device=dev).manual_seed(1)
    wg = torch.randn(a.d, a.h, device=dev, dtype=dt, generator=g) * 0.02
    wu = torch.randn(a.d, a.h, device=dev, dtype=dt, generator=g) * 0.02
    wd = torch.randn(a.h, a.d, device=dev, dtype=dt, generator=g) * 0.02
    chunk = []
    print(f"expert chunk, D {a.d} H {a.h} {a.dtype} (3 GEMMs + SwiGLU), median of 50")
    print(f"{'rows':>7} {'ms':>9} {'TFLOP/s':>8} {'us/row':>8}")
    for rows in [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]:
        x = torch.randn(rows, a.d, device=dev, dtype=dt, generator=g)

        def f():
            h = torch.nn.functional.silu(x @ wg) * (x @ wu)
            return h @ wd

        ms = median_ms(f)
        flop = 2.0 * rows * a.d * a.h * 3
        chunk.append({"rows": rows, "ms": ms, "tflops": flop / ms / 1e9})
        print(f"{rows:>7} {ms:>9.4f} {flop / ms / 1e9:>8.1f} {ms * 1e3 / rows:>8.3f}")
    expert_bytes = 3 * a.d * a.h * wg.element_size()
    copies = []
    print(f"copies of one expert's weights ({expert_bytes / 2**20:.1f} MiB) and of 1 MiB")
    for nbytes in [1 << 20, expert_bytes]:
        src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        d2d = median_ms(lambda: dst.copy_(src, non_blocking=True))
        h2d = median_ms(lambda: src.copy_(host, non_blocking=True))
        d2h = median_ms(lambda: host.copy_(src, non_blocking=True))
        for kind, ms in (("d2d", d2d), ("h2d", h2d), ("d2h", d2h)):
            copies.append({"kind": kind, "bytes": nbytes, "ms": ms, "gb_s": nbytes / ms / 1e6})
            print(f"  {kind} {nbytes:>10} B {ms:>8.4f} ms {nbytes / ms / 1e6:>8.1f} GB/s")
    res = {"device": torch.cuda.get_device_name(0), "d": a.d, "h": a.h, "dtype": a.dtype,
           "torch": torch.__version__, "chunk": chunk, "copies": copies}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
