"""qsdpa.attention against MLX: the 10 scenarios of SPEC §6 (MLX's tolerances
against unquantized SDPA, and SPEC §4 against the float64 oracle over the
dequantized K/V), random sweeps, mlx-lm's cache layout and strided views of a
preallocated cache."""
import numpy as np
import pytest

import mlx.core as mx

import qsdpa
from conftest import assert_close_spec, mx_dequantize, mx_quantize, reference

B, HQ, HKV, LK, D = 1, 2, 1, 640, 128
FP_MODES = ["mxfp4", "mxfp8", "nvfp4"]
AFFINE_BITS = [4, 6, 8]


def tol(mode, bits):
    if mode == "affine":
        return {4: 5e-2, 6: 1e-1, 8: 2e-2}[bits]
    return 2e-2 if mode == "mxfp8" else 5e-2


def quantize_kv(k, v, mode, bits, group):
    kq, vq = mx_quantize(k, mode, group, bits), mx_quantize(v, mode, group, bits)
    kd, vd = mx_dequantize(*kq, mode, group, bits), mx_dequantize(*vq, mode, group, bits)
    return kq, vq, kd, vd


def make_mask(rng, kind, lq, lk):
    if kind == "bool":
        return rng.uniform(size=(B, HQ, lq, lk)) > 0.2
    if kind == "additive":
        return np.where(rng.uniform(size=(B, HQ, lq, lk)) > 0.2, 0.0, -1e9).astype(np.float32)
    return None


def scenario_cases():
    """Scenarios 1-9 of SPEC §6 as (mode, bits, lq, mask, sinks, causal)."""
    cases = []
    for m in FP_MODES:
        cases.append((m, None, 4, None, None, False))                       # 1
    for b in AFFINE_BITS:
        cases.append(("affine", b, 4, None, None, False))                   # 2
    for m in FP_MODES:
        for lq in (4, 9):
            for mk in ("bool", "additive"):
                cases.append((m, None, lq, mk, None, False))                # 3
    for b in AFFINE_BITS:
        for lq in (4, 9):
            for mk in ("bool", "additive"):
                cases.append(("affine", b, lq, mk, None, False))            # 4
    for m in FP_MODES:
        for lq in (4, 9):
            cases.append((m, None, lq, None, (0.7, -0.4), False))           # 5
    for lq in (4, 9):
        for mk in ("bool", "additive"):
            cases.append(("mxfp4", None, lq, mk, (0.5, -0.3), False))       # 6
    for lq in (4, 9):
        cases.append(("affine", 4, lq, "bool", (0.2, -0.1), False))         # 7
    for m in FP_MODES:
        for lq in (4, 9):
            cases.append((m, None, lq, None, None, True))                   # 8
    for b in AFFINE_BITS:
        for lq in (4, 9):
            cases.append(("affine", b, lq, None, None, True))               # 9
    return cases


CASES = scenario_cases()


def test_scenario_count():
    assert len(CASES) == 54  # scenarios 1-9 of SPEC §6; scenario 10 is below


@pytest.mark.parametrize("mode,bits,lq,mask_kind,sinks,causal", CASES)
def test_mlx_scenario(rng, mode, bits, lq, mask_kind, sinks, causal):
    group = 32 if mode == "affine" else None  # MLX's quantized SDPA test uses group 32
    q = (0.1 * rng.standard_normal((B, HQ, lq, D))).astype(np.float32)
    k = (0.1 * rng.standard_normal((B, HKV, LK, D))).astype(np.float32)
    v = (0.1 * rng.standard_normal((B, HKV, LK, D))).astype(np.float32)
    mask = make_mask(rng, mask_kind, lq, LK)
    s = None if sinks is None else np.array(sinks, np.float32)
    kq, vq, kd, vd = quantize_kv(k, v, mode, bits, group)
    out = qsdpa.attention(q, *kq, *vq, scale=1.0, mask=mask, sinks=s, group_size=group, bits=bits, mode=mode,
                          causal=causal)
    assert out.shape == (B, HQ, lq, D) and out.dtype == np.float32
    # MLX's own check: quantized attention against unquantized SDPA, its tolerance.
    mmask = "causal" if causal else (None if mask is None else mx.array(mask))
    ref_unq = np.array(mx.fast.scaled_dot_product_attention(
        mx.array(q), mx.array(k), mx.array(v), scale=1.0, mask=mmask, sinks=None if s is None else mx.array(s)))
    assert np.abs(out - ref_unq).max() <= tol(mode, bits)
    # Same K/V as MLX dequantizes them, through MLX's SDPA and the float64 oracle.
    ref_deq = np.array(mx.fast.scaled_dot_product_attention(
        mx.array(q), mx.array(kd), mx.array(vd), scale=1.0, mask=mmask, sinks=None if s is None else mx.array(s)))
    assert np.abs(out - ref_deq).max() <= tol(mode, bits)
    assert_close_spec(out, reference(q, kd, vd, 1.0, mask, s, causal), vd, f"{mode}:{bits}")


def test_scenario_10_causal_with_mask_is_an_error(rng):
    q = rng.standard_normal((B, HQ, 4, D)).astype(np.float32)
    kq = mx_quantize(rng.standard_normal((B, HKV, 64, D)).astype(np.float32), "affine", 32, 4)
    with pytest.raises(ValueError, match="causal"):
        qsdpa.attention(q, *kq, *kq, scale=1.0, mask=np.ones((4, 64), bool), group_size=32, bits=4, causal=True)


SWEEP = [  # (mode, group, bits, Hq, Hkv, Lq, Lk, D, q dtype)
    ("affine", 64, 4, 8, 2, 1, 1, 128, np.float32),
    ("affine", 64, 8, 32, 8, 1, 1031, 128, np.float16),
    ("affine", 128, 3, 4, 1, 7, 300, 128, np.float32),
    ("affine", 32, 2, 4, 4, 3, 97, 64, np.float32),
    ("affine", 64, 5, 8, 1, 2, 513, 256, np.float16),
    ("mxfp4", None, None, 8, 2, 1, 777, 96, np.float32),
    ("mxfp8", None, None, 16, 2, 5, 64, 192, np.float32),
    ("nvfp4", None, None, 4, 2, 33, 150, 64, np.float16),
]


@pytest.mark.parametrize("mode,group,bits,hq,hkv,lq,lk,d,qdt", SWEEP)
@pytest.mark.parametrize("extra", ["none", "causal", "window", "sinks", "bool"])
def test_random_sweep(rng, mode, group, bits, hq, hkv, lq, lk, d, qdt, extra):
    b = 2 if lk < 200 else 1
    q = rng.standard_normal((b, hq, lq, d)).astype(qdt)
    k = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    kq, vq, kd, vd = quantize_kv(k, v, mode, bits, group)
    kw = dict(scale=1.0 / np.sqrt(d), group_size=group, bits=bits, mode=mode)
    causal = extra in ("causal", "window")
    window = max(1, lk // 3) if extra == "window" else None
    sinks = rng.standard_normal(hq).astype(np.float32) if extra == "sinks" else None
    mask = (rng.uniform(size=(lq, lk)) > 0.3) if extra == "bool" else None
    out = qsdpa.attention(q, *kq, *vq, mask=mask, sinks=sinks, causal=causal, window=window, **kw)
    assert out.dtype == qdt
    want = reference(q, kd, vd, kw["scale"], mask, sinks, causal, window)
    assert_close_spec(out, want, vd, f"{mode} {extra}")


@pytest.mark.parametrize("bits", [4, 8])
def test_mlx_lm_cache_layout_strided(rng, bits):
    """mlx-lm's QuantizedKVCache: group 64, (B, Hkv, capacity, D*bits/32) buffers grown in
    steps of 256 and sliced to the offset; qsdpa reads the slice without a copy."""
    b, hkv, hq, d, step, offset = 1, 4, 16, 128, 256, 300
    cap = (offset + step - 1) // step * step
    kbuf = [np.zeros((b, hkv, cap, d * bits // 32), np.uint32), np.zeros((b, hkv, cap, d // 64), np.float16),
            np.zeros((b, hkv, cap, d // 64), np.float16)]
    vbuf = [x.copy() for x in kbuf]
    k = rng.standard_normal((b, hkv, offset, d)).astype(np.float16)
    v = rng.standard_normal((b, hkv, offset, d)).astype(np.float16)
    for buf, x in ((kbuf, k), (vbuf, v)):
        for dst, src in zip(buf, mx_quantize(x, "affine", 64, bits)):
            dst[..., :offset, :] = src
    kview = [x[..., :offset, :] for x in kbuf]
    vview = [x[..., :offset, :] for x in vbuf]
    assert not kview[0].flags.c_contiguous
    q = rng.standard_normal((b, hq, 1, d)).astype(np.float16)
    out = qsdpa.attention(q, *kview, *vview, scale=d ** -0.5, group_size=64, bits=bits)
    kd = mx_dequantize(*[np.ascontiguousarray(x) for x in kview], "affine", 64, bits)
    vd = mx_dequantize(*[np.ascontiguousarray(x) for x in vview], "affine", 64, bits)
    assert_close_spec(out, reference(q, kd, vd, d ** -0.5), vd, "mlx-lm layout")
    # The result does not depend on the capacity behind the view.
    out2 = qsdpa.attention(q, *[np.ascontiguousarray(x) for x in kview], *[np.ascontiguousarray(x) for x in vview],
                           scale=d ** -0.5, group_size=64, bits=bits)
    assert np.array_equal(out, out2)


@pytest.mark.parametrize("bits", [4, 8])
def test_mlx_lm_cache_with_mlx_arrays(rng, bits):
    """The same mlx-lm layout handed over as MLX arrays (DLPack): sliced buffers of a
    preallocated cache, quantized by mx.quantize, result in a NumPy array."""
    b, hkv, hq, d, cap, offset = 1, 2, 8, 128, 512, 333
    keys = [mx.zeros((b, hkv, cap, d * bits // 32), dtype=mx.uint32), mx.zeros((b, hkv, cap, d // 64), mx.float16),
            mx.zeros((b, hkv, cap, d // 64), mx.float16)]
    values = [mx.zeros_like(x) for x in keys]
    k = mx.array(rng.standard_normal((b, hkv, offset, d)).astype(np.float16))
    v = mx.array(rng.standard_normal((b, hkv, offset, d)).astype(np.float16))
    for buf, x in ((keys, k), (values, v)):
        for i, part in enumerate(mx.quantize(x, group_size=64, bits=bits)):
            buf[i][..., :offset, :] = part
    q = mx.array(rng.standard_normal((b, hq, 1, d)).astype(np.float16))
    out = qsdpa.attention(q, *[x[..., :offset, :] for x in keys], *[x[..., :offset, :] for x in values],
                          scale=d ** -0.5, group_size=64, bits=bits)
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    kd = mx_dequantize(*[np.array(x[..., :offset, :]) for x in keys], "affine", 64, bits)
    vd = mx_dequantize(*[np.array(x[..., :offset, :]) for x in values], "affine", 64, bits)
    assert_close_spec(out, reference(np.array(q), kd, vd, d ** -0.5), vd, "mlx arrays")


@pytest.mark.parametrize("mode,bits,group", [("affine", 4, 64), ("affine", 8, 64), ("mxfp4", None, None),
                                             ("nvfp4", None, None)])
def test_mla_latent_cache_as_k_and_v(rng, mode, bits, group):
    """A DeepSeek-style MLA latent cache quantized by mx.quantize: rows [c_kv 512 | k_rope 64], one KV head.
    K is the whole row (Dk 576); V is a NumPy view of its first 512 dims (codes and scale columns), no
    copy. Checked against MLX's SDPA over mx.dequantize's K and V and the float64 oracle."""
    hq, lk, dk, dv = 16, 300, 576, 512
    lat = (0.5 * rng.standard_normal((1, 1, lk, dk))).astype(np.float16)
    kq = mx_quantize(lat, mode, group, bits)
    per = 32 // (bits or 4)                                     # codes a uint32 word holds
    g = group or (16 if mode == "nvfp4" else 32)
    vq = (kq[0][..., :dv // per], kq[1][..., :dv // g], None if kq[2] is None else kq[2][..., :dv // g])
    assert not vq[0].flags.c_contiguous                         # a view into K's rows
    q = rng.standard_normal((1, hq, 1, dk)).astype(np.float16)
    scale = 192 ** -0.5                                         # DeepSeek's, from the head dim before absorption
    out = qsdpa.attention(q, *kq, *vq, scale=scale, group_size=group, bits=bits, mode=mode)
    assert out.shape == (1, hq, 1, dv)
    kd = mx_dequantize(*kq, mode, group, bits)
    vd = mx_dequantize(*[None if x is None else np.ascontiguousarray(x) for x in vq], mode, group, bits)
    assert np.array_equal(vd, kd[..., :dv])                     # V is K's first 512 dims, as MLX reads them
    ref_mlx = np.array(mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(kd.astype(np.float16)),
                                                            mx.array(vd.astype(np.float16)), scale=scale))
    assert np.abs(out.astype(np.float32) - ref_mlx.astype(np.float32)).max() <= 2e-3 * np.abs(vd).max()
    assert_close_spec(out, reference(q, kd, vd, scale), vd, f"MLA {mode}:{bits}")


def test_different_k_and_v_formats(rng):
    q = rng.standard_normal((1, 4, 2, 128)).astype(np.float32)
    k = rng.standard_normal((1, 2, 90, 128)).astype(np.float32)
    v = rng.standard_normal((1, 2, 90, 64)).astype(np.float32)
    kq = mx_quantize(k, "affine", 64, 8)
    vq = mx_quantize(v, "mxfp4")
    out = qsdpa.attention(q, *kq, vq[0], vq[1], None, scale=0.1, group_size=64, bits=8, v_mode="mxfp4")
    want = reference(q, mx_dequantize(*kq, "affine", 64, 8), mx_dequantize(*vq, "mxfp4"), 0.1)
    assert out.shape == (1, 4, 2, 64)
    assert_close_spec(out, want, mx_dequantize(*vq, "mxfp4"))


def test_out_argument_is_written_in_place(rng):
    q = rng.standard_normal((1, 2, 1, 64)).astype(np.float32)
    kq = mx_quantize(rng.standard_normal((1, 1, 10, 64)).astype(np.float32), "affine", 64, 4)
    out = np.full((1, 2, 1, 64), np.nan, np.float32)
    res = qsdpa.attention(q, *kq, *kq, scale=0.125, out=out)
    assert res is out and np.isfinite(out).all()


def test_attention_bad_input(rng):
    q = rng.standard_normal((1, 3, 1, 64)).astype(np.float32)
    kq = mx_quantize(rng.standard_normal((1, 2, 10, 64)).astype(np.float32), "affine", 64, 4)
    with pytest.raises(ValueError, match="Hq|heads"):  # 3 query heads over 2 KV heads
        qsdpa.attention(q, *kq, *kq, scale=1.0)
    q = q[:, :2]
    with pytest.raises(TypeError):
        qsdpa.attention(q.astype(np.int32), *kq, *kq, scale=1.0)
    with pytest.raises(TypeError):
        qsdpa.attention("q", *kq, *kq, scale=1.0)
    with pytest.raises(ValueError):
        qsdpa.attention(q, kq[0], kq[1], None, *kq, scale=1.0)  # affine without biases
    with pytest.raises(ValueError):
        qsdpa.attention(q, *kq, *kq, scale=1.0, bits=8)  # packed width disagrees with bits
    with pytest.raises(ValueError):
        qsdpa.attention(q, *kq, *kq, scale=1.0, window=4)  # window without causal
    with pytest.raises(ValueError):
        qsdpa.attention(q, *kq, *kq, scale=1.0, sinks=np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        qsdpa.attention(q, *kq, *kq, scale=1.0, mask="bottom")
    out = np.full((1, 2, 1, 64), np.nan, np.float32)
    with pytest.raises(ValueError):
        qsdpa.attention(q, *kq, *kq, scale=1.0, mask=np.ones((1, 11), bool), out=out)
    assert np.isnan(out).all(), "a failing call wrote its output"


def test_context_last_route_names_the_kernel_that_ran(rng):
    ctx = qsdpa.Context()
    assert ctx.last_route == ""
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    kq = mx_quantize(rng.standard_normal((1, 2, 50, 64)).astype(np.float32), "affine", 64, 4)
    qsdpa.attention(q, *kq, *kq, scale=0.125, context=ctx)
    kernel = ctx.last_route.split("+")[0]  # a row's inner path follows "+" (e.g. "+amx.i8": AMX int8 tiles)
    assert kernel.startswith("cpu.") and kernel.endswith(".decode")
    plain = qsdpa.Context(disable_simd=True)
    qsdpa.attention(q, *kq, *kq, scale=0.125, context=plain)
    assert plain.last_route == "cpu.c.decode"
