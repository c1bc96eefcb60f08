"""The KV formats of the quality table, and the attention back ends that run them.

A format is a K side and a V side, each (mode, bits, group) or None for the
unquantized f32 cache, plus an optional residual window R: the newest R tokens of
the cache stay f32 (KIVI; qsdpa's cache option `residual`).

Back ends (chosen with --backend; `auto` = qsdpa when the Python package imports):
  qsdpa  quantize with qsdpa.quantize, attend with qsdpa.attention (one causal
         prefill call per layer: every query sees every earlier key quantized, which
         is what a cache filled token by token holds). Residual-window formats go
         through qsdpa's cache object token by token, so that at step t the window
         is exactly tokens (t-R, t].
  mlx    the oracle: mx.quantize -> mx.dequantize, then f32 attention in NumPy with
         the same per-query window. Used to develop the tool and to cross-check.
"""
import numpy as np

from model import attention_f32


class Side:
    def __init__(self, mode, bits, group):
        self.mode, self.bits, self.group = mode, bits, group

    def __str__(self):
        return f"{self.mode}:{self.bits}:{self.group}"


class Format:
    def __init__(self, name, k, v, residual=0, note=""):
        self.name, self.k, self.v, self.residual, self.note = name, k, v, residual, note

    def bits_per_value(self, dim=64):
        """Stored bits per K and V element, codes plus scales (and biases), residual
        ignored; affine scale and bias counted at 16 bits each, as an f16/bf16 model
        stores them (this tool quantizes f32 rows, so it keeps them in f32)."""
        def side(s):
            if s is None:
                return 32.0
            extra = {"affine": 2 * 16, "mxfp4": 8, "mxfp8": 8, "nvfp4": 8}[s.mode]
            return s.bits + extra / s.group
        return (side(self.k) + side(self.v)) / 2


def a(bits, group):
    return Side("affine", bits, group)


FORMATS = [
    Format("f32", None, None, note="baseline"),
    Format("affine 8/g64", a(8, 64), a(8, 64), note="mlx-lm kv_bits=8"),
    Format("affine 6/g64", a(6, 64), a(6, 64)),
    Format("affine 6/g32", a(6, 32), a(6, 32), note="a width of MLX's quantized SDPA"),
    Format("affine 4/g64", a(4, 64), a(4, 64), note="mlx-lm kv_bits=4"),
    Format("affine 4/g32", a(4, 32), a(4, 32)),
    Format("affine 3/g64", a(3, 64), a(3, 64)),
    Format("affine 2/g64", a(2, 64), a(2, 64)),
    Format("mxfp4", Side("mxfp4", 4, 32), Side("mxfp4", 4, 32)),
    Format("mxfp8", Side("mxfp8", 8, 32), Side("mxfp8", 8, 32)),
    Format("nvfp4", Side("nvfp4", 4, 16), Side("nvfp4", 4, 16)),
    Format("K8V4 (g64)", a(8, 64), a(4, 64)),
    Format("K4V8 (g64)", a(4, 64), a(8, 64)),
    Format("K8V4 (g32)", a(8, 32), a(4, 32)),
    Format("K mxfp8 / V mxfp4", Side("mxfp8", 8, 32), Side("mxfp4", 4, 32)),
    Format("affine 4/g64 + R128", a(4, 64), a(4, 64), residual=128,
           note="newest 128 tokens f32"),
]


def by_name(names):
    table = {f.name: f for f in FORMATS}
    return [table[n] for n in names]


# --- mlx oracle ---------------------------------------------------------------------

def mlx_roundtrip(x, side):
    """x [H, L, D] f32 -> dequantize(quantize(x)) with MLX, f32."""
    if side is None:
        return x
    import mlx.core as mx
    kw = dict(group_size=side.group, bits=side.bits, mode=side.mode)
    parts = mx.quantize(mx.array(x), **kw)
    if side.mode == "affine":
        w, s, b = parts
    else:
        (w, s), b = parts, None
    return np.array(mx.dequantize(w, s, b, dtype=mx.float32, **kw))


def attention_window(q, kq, vq, kf, vf, scale, residual):
    """Causal attention where query i sees key j from (kf, vf) if j > i - residual
    and from the quantized (kq, vq) otherwise. q [Hq, L, D], k*/v* [Hkv, L, D]."""
    hq, L, _ = q.shape
    rep = hq // kq.shape[0]
    i = np.arange(L)[:, None]
    j = np.arange(L)[None, :]
    recent = j > i - residual                                    # [L, L]
    s = np.where(recent,
                 q @ np.repeat(kf, rep, 0).transpose(0, 2, 1),
                 q @ np.repeat(kq, rep, 0).transpose(0, 2, 1)) * np.float32(scale)
    s = np.where(j <= i, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (np.where(recent, p, 0) @ np.repeat(vf, rep, 0)
            + np.where(recent, 0, p) @ np.repeat(vq, rep, 0))


def mlx_attend(fmt, scale):
    def attend(layer, q, k, v):
        kq, vq = mlx_roundtrip(k, fmt.k), mlx_roundtrip(v, fmt.v)
        if fmt.residual:
            return attention_window(q, kq, vq, k, v, scale, fmt.residual)
        return attention_f32(q, kq, vq, scale)
    return attend
