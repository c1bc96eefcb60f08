"""Attention of the quality table through the qsdpa Python package (python/qsdpa).

Regular formats: K and V of the whole sequence are quantized with qsdpa.quantize
and one causal qsdpa.attention call per layer attends every query over them. Per-row
quantization does not depend on when a row was written, so this is exactly what a
cache filled token by token holds at each decode step.

Residual-window formats cannot be done in one call (query t must see tokens
(t-R, t] unquantized and the older ones quantized), so they run as real decode:
one qsdpa.Cache per layer, append token t, attend query t, for every t.
"""
import numpy as np
import qsdpa

NAME = "qsdpa"


def _kw(side):
    return dict(group_size=side.group, bits=side.bits, mode=side.mode)


def quantize(x, side):
    """x [B, H, L, D] f32 -> (codes, scales, biases-or-None) via qsdpa.quantize."""
    parts = qsdpa.quantize(x, **_kw(side))
    return parts if len(parts) == 3 else (parts[0], parts[1], None)


def _fmt_text(side):
    return qsdpa.format_string(**_kw(side))


def attend(fmt, scale):
    if fmt.k is None or fmt.v is None:
        raise ValueError(f"{fmt.name}: K and V must both be quantized for qsdpa.attention")
    if fmt.residual:
        return _attend_cache(fmt, scale)

    def f(layer, q, k, v):
        kq, vq = quantize(k[None], fmt.k), quantize(v[None], fmt.v)
        out = qsdpa.attention(q[None], *kq, *vq, scale=scale, causal=True, **_kw(fmt.k),
                              v_group_size=fmt.v.group, v_bits=fmt.v.bits, v_mode=fmt.v.mode)
        return out[0]
    return f


def _attend_cache(fmt, scale):
    def f(layer, q, k, v):
        hkv, L, d = k.shape
        cache = qsdpa.Cache(1, 1, hkv, d, d, k_format=_fmt_text(fmt.k), v_format=_fmt_text(fmt.v),
                            scale_dtype="f32", residual=fmt.residual, residual_dtype="f32")
        out = np.empty(q.shape, np.float32)
        for t in range(L):
            cache.append(0, k[None, :, t:t + 1], v[None, :, t:t + 1])
            out[:, t:t + 1] = cache.attend(0, q[None, :, t:t + 1], scale=scale, causal=True)[0]
        return out
    return f
