"""The MoE layer of DESIGN.md section 4 in float64, written out plainly with numpy, and the
framework layouts written from llep's own by their definitions (include/llep/types.h)."""
from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)


def moe(x, idx, w, wg, wu, wd, bg=None, bu=None, bd=None, act: str = "swiglu",
        alpha: float = 1.702, limit: float = 7.0) -> np.ndarray:
    """y[t] = sum over k of w[t, k] * FFN_{idx[t, k]}(x[t]), in float64, for x [T, D], idx and
    w [T, K], weights in llep's layout: wg, wu [N, D, H], wd [N, H, D], biases [N, H], [N, D]."""
    x = np.asarray(x, np.float64)
    y = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = int(idx[t, k])
            g = x[t] @ wg[e].astype(np.float64)
            u = x[t] @ wu[e].astype(np.float64)
            if bg is not None:
                g = g + bg[e]
                u = u + bu[e]
            if act == "swiglu":
                a = g / (1.0 + np.exp(-g)) * u
            else:
                gc = np.minimum(g, limit)
                uc = np.clip(u, -limit, limit)
                a = (uc + 1.0) * gc / (1.0 + np.exp(-alpha * gc))
            f = a @ wd[e].astype(np.float64)
            if bd is not None:
                f = f + bd[e]
            y[t] += float(w[t, k]) * f
    return y


def rel_l2(y, ref) -> float:
    y = np.asarray(y, np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-300))


def to_float(a) -> np.ndarray:
    """A numpy array or torch tensor of any float type as float64."""
    if hasattr(a, "detach"):
        a = a.detach().float().numpy()
    return np.asarray(a).astype(np.float64)


class Weights:
    """A layer's weights in llep's layout, as float32 values exact in `dtype` ("f32" or
    "bf16"), with biases."""

    def __init__(self, rng: np.random.Generator, n: int, d: int, h: int, dtype: str = "f32",
                 bias: bool = True):
        self.n, self.d, self.h, self.dtype = n, d, h, dtype

        def draw(*shape, scale):
            v = (rng.standard_normal(shape) * scale).astype(np.float32)
            return v.astype(BF16).astype(np.float32) if dtype == "bf16" else v

        self.wg = draw(n, d, h, scale=d ** -0.5)
        self.wu = draw(n, d, h, scale=d ** -0.5)
        self.wd = draw(n, h, d, scale=h ** -0.5)
        self.bg = draw(n, h, scale=0.1) if bias else None
        self.bu = draw(n, h, scale=0.1) if bias else None
        self.bd = draw(n, d, scale=0.1) if bias else None

    def store(self, a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """a as the layer stores it: float32, or ml_dtypes.bfloat16."""
        if a is None:
            return None
        return np.ascontiguousarray(a.astype(BF16) if self.dtype == "bf16" else a)

    def layout(self, gate_up: str, down: str) -> dict:
        """create_layer's weight arguments in the given layouts, each element placed by the
        layout's definition."""
        n, d, h = self.n, self.d, self.h
        out: dict = {"gate_up_layout": gate_up, "down_layout": down}
        if gate_up == "separate":
            out["w_gate"], out["w_up"] = self.wg, self.wu
        elif gate_up == "separate_t":
            out["w_gate"], out["w_up"] = self.wg.transpose(0, 2, 1), self.wu.transpose(0, 2, 1)
        else:
            gu = np.empty((n, d, 2 * h), np.float32)
            if gate_up == "interleaved":
                gu[:, :, 0::2], gu[:, :, 1::2] = self.wg, self.wu
            else:
                gu[:, :, :h], gu[:, :, h:] = self.wg, self.wu
            out["w_gate_up"] = gu.transpose(0, 2, 1) if gate_up == "fused_t" else gu
        out["w_down"] = self.wd if down == "hd" else self.wd.transpose(0, 2, 1)
        if self.bg is not None:
            if gate_up in ("separate", "separate_t"):
                out["b_gate"], out["b_up"] = self.bg, self.bu
            else:
                bgu = np.empty((n, 2 * h), np.float32)
                if gate_up == "interleaved":
                    bgu[:, 0::2], bgu[:, 1::2] = self.bg, self.bu
                else:
                    bgu[:, :h], bgu[:, h:] = self.bg, self.bu
                out["b_gate_up"] = bgu
            out["b_down"] = self.bd
        for key in list(out):
            if key.startswith(("w_", "b_")):
                out[key] = self.store(out[key])
        return out

    def reference(self, x, idx, w, **act) -> np.ndarray:
        return moe(x, idx, w, self.wg, self.wu, self.wd, self.bg, self.bu, self.bd, **act)
