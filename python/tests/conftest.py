"""Shared helpers of the qsdpa package tests: a float64 NumPy oracle of SPEC §3
over K/V dequantized by MLX, and MLX's own SDPA for its scenario tolerances.
MLX is part of the contract: a missing mlx fails these tests, it never skips them."""
import numpy as np
import pytest

import qsdpa

# mlx is imported by the helpers that use it: an MLX test without mlx fails (by
# design, never skips), while test_cuda.py also runs where only torch is installed.


@pytest.fixture
def rng(request):
    """Fresh random data each run; the seed is printed so a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"seed {seed} for {request.node.name}")
    return np.random.default_rng(seed)


def mx_quantize(x, mode, group_size=None, bits=None):
    """mx.quantize as NumPy arrays; biases None for the fp modes."""
    import mlx.core as mx
    kw = {} if mode != "affine" else {"group_size": group_size or 64, "bits": bits or 4}
    r = mx.quantize(mx.array(x), mode=mode, **kw)
    out = [np.array(a) for a in r]
    return (out[0], out[1], out[2] if len(out) == 3 else None)


def mx_dequantize(w, scales, biases, mode, group_size=None, bits=None):
    import mlx.core as mx
    kw = {} if mode != "affine" else {"group_size": group_size or 64, "bits": bits or 4}
    b = None if biases is None else mx.array(biases)
    return np.array(mx.dequantize(mx.array(w), mx.array(scales), b, mode=mode, dtype=mx.float32, **kw))


def reference(q, k, v, scale, mask=None, sinks=None, causal=False, window=None):
    """SPEC §3 in float64: q [B,Hq,Lq,Dk], k/v dequantized [B,Hkv,Lk,D]."""
    q64 = q.astype(np.float64)
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k64 = np.repeat(k.astype(np.float64), rep, axis=1)
    v64 = np.repeat(v.astype(np.float64), rep, axis=1)
    s = scale * np.einsum("bhid,bhjd->bhij", q64, k64)
    lowest = float(np.finfo(q.dtype).min)
    if causal:
        i = np.arange(Lq)[:, None] + (Lk - Lq)
        j = np.arange(Lk)[None, :]
        keep = j <= i
        if window:
            keep &= j > i - window
        s = np.where(keep, s, lowest)
    if mask is not None:
        if mask.dtype == np.bool_:
            s = np.where(np.broadcast_to(mask, s.shape), s, lowest)
        else:
            s = s + np.broadcast_to(mask.astype(np.float64), s.shape)
    if sinks is not None:
        col = np.broadcast_to(sinks.astype(np.float64)[None, :, None, None], (B, Hq, Lq, 1))
        s = np.concatenate([col, s], axis=-1)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        p = p[..., 1:]
    return np.einsum("bhij,bhjd->bhid", p, v64)


def spec_tol(dtype):
    """SPEC §4 bound, in units of max|V|."""
    return {np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-3}[np.dtype(dtype)]


def assert_close_spec(out, want, v, what=""):
    err = float(np.abs(out.astype(np.float64) - want).max())
    bound = spec_tol(out.dtype) * float(np.abs(v).max())
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"
    return err
