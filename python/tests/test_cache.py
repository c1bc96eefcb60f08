"""qsdpa.Cache: append/attend/trim/save/load round trips and bad input."""
import os

import numpy as np
import pytest

import qsdpa
from conftest import assert_close_spec, mx_dequantize, reference

FORMATS = ["affine:4:64", "affine:8:64", "mxfp4", "nvfp4", "mxfp8", "f16"]


def dequantized_layer(cache, layer):
    """K and V of a layer as f32, from the cache's own views (quantized part, then window)."""
    opts = cache.options
    sides = []
    for i, fmt in enumerate((opts["k_format"], opts["v_format"])):
        quant = cache.view(layer, "quantized")[i]
        window = cache.view(layer, "residual")[i][0]
        if quant[0].shape[2] == 0:  # everything is in the window (MLX cannot dequantize empty arrays)
            deq = np.zeros(window.shape[:2] + (0, window.shape[3]), np.float32)
        elif fmt in ("f16", "f32", "bf16"):
            deq = quant[0].astype(np.float32)
        else:
            mode, bits, group = (fmt.split(":") + [None, None])[:3]
            if mode == "affine":
                deq = mx_dequantize(*[np.ascontiguousarray(a) for a in quant], "affine", int(group), int(bits))
            else:
                deq = mx_dequantize(np.ascontiguousarray(quant[0]), np.ascontiguousarray(quant[1]), None, mode)
        sides.append(np.concatenate([deq, window.astype(np.float32)], axis=2))
    return sides


@pytest.mark.parametrize("kf,vf,residual", [("affine:4:64", "affine:4:64", 0), ("affine:8:64", "mxfp4", 0),
                                            ("nvfp4", "affine:4:64", 8), ("mxfp8", "f16", 3),
                                            ("affine:4:64", "affine:8:64", 64)])
def test_decode_loop_matches_reference(rng, kf, vf, residual):
    b, hkv, hq, d = 1, 2, 8, 128
    cache = qsdpa.Cache(2, b, hkv, d, k_format=kf, v_format=vf, step=32, residual=residual, scale_dtype="f32",
                        residual_dtype="f32")
    total = 0
    for step in range(12):
        t = 17 if step == 0 else int(rng.integers(1, 4))  # a prefill, then decode steps
        for layer in range(2):
            k = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
            v = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
            cache.append(layer, k, v)
        total += t
        q = rng.standard_normal((b, hq, t, d)).astype(np.float32)
        out = cache.attend(0, q, causal=True)
        kd, vd = dequantized_layer(cache, 0)
        assert kd.shape[2] == cache.length(0) == cache.length(1) == total
        assert_close_spec(out, reference(q, kd, vd, d ** -0.5, causal=True), vd, f"step {step}")
        if step == 6:
            cache.trim(2)  # speculative roll-back
            total -= 2
    # The window holds the newest rows exactly (f32 window, f32 input).
    if residual:
        window = cache.view(0, "residual")[0][0]
        assert window.shape[2] == min(residual, cache.length(0))


def test_cache_equals_quantize_then_attention(rng):
    """A cache without window stores exactly qsdpa.quantize's bytes (mlx-lm's layout) and
    attend equals qsdpa.attention over those arrays."""
    b, hkv, d, n = 2, 2, 64, 70
    cache = qsdpa.Cache(1, b, hkv, d, k_format="affine:8:64", scale_dtype="f16", step=16)
    k = rng.standard_normal((b, hkv, n, d)).astype(np.float16)
    v = rng.standard_normal((b, hkv, n, d)).astype(np.float16)
    for s in range(0, n, 9):
        cache.append(0, k[:, :, s:s + 9], v[:, :, s:s + 9])
    (ck, cks, ckb), (cv, cvs, cvb) = cache.view(0)
    assert ck.shape == (b, hkv, n, d * 8 // 32) and ck.strides[1] == 80 * ck.strides[2]  # capacity 80
    for got, want in zip((ck, cks, ckb, cv, cvs, cvb), qsdpa.quantize(k, 64, 8) + qsdpa.quantize(v, 64, 8)):
        assert np.array_equal(got, want)
    q = rng.standard_normal((b, 4, 3, d)).astype(np.float16)
    a = cache.attend(0, q, scale=0.1, causal=True)
    w = qsdpa.attention(q, ck, cks, ckb, cv, cvs, cvb, scale=0.1, group_size=64, bits=8, causal=True)
    assert np.array_equal(a, w)


def test_save_load_round_trip(rng, tmp_path):
    cache = qsdpa.Cache(3, 1, 2, 128, dim_v=64, k_format="mxfp4", v_format="affine:4:32", residual=5, step=8)
    for layer in range(3):
        for _ in range(4):
            cache.append(layer, rng.standard_normal((1, 2, 3, 128)).astype(np.float32),
                         rng.standard_normal((1, 2, 3, 64)).astype(np.float16))
    path = tmp_path / "cache.qkv"
    cache.save(path)
    loaded = qsdpa.Cache.load(path)
    assert loaded.options == cache.options
    q = rng.standard_normal((1, 4, 1, 128)).astype(np.float32)
    for layer in range(3):
        assert loaded.length(layer) == 12
        assert np.array_equal(loaded.attend(layer, q), cache.attend(layer, q))
    data = path.read_bytes()
    for cut in (0, 7, 100, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.qkv").write_bytes(data[:cut])
        with pytest.raises(OSError):
            qsdpa.Cache.load(tmp_path / "cut.qkv")
    flipped = bytearray(data)
    flipped[len(data) - 40] ^= 0x10
    (tmp_path / "flip.qkv").write_bytes(bytes(flipped))
    with pytest.raises(OSError, match="checksum"):
        qsdpa.Cache.load(tmp_path / "flip.qkv")
    with pytest.raises(OSError):
        qsdpa.Cache.load(tmp_path / "missing.qkv")


def test_memory_per_format(rng):
    sizes = {}
    for fmt in FORMATS:
        c = qsdpa.Cache(1, 1, 8, 128, k_format=fmt, step=256)
        c.append(0, rng.standard_normal((1, 8, 256, 128)).astype(np.float16),
                 rng.standard_normal((1, 8, 256, 128)).astype(np.float16))
        sizes[fmt] = c.nbytes
        assert c.allocated_bytes >= c.nbytes
    per_token = {f: s / (2 * 8 * 256 * 128) for f, s in sizes.items()}  # bytes per element
    assert per_token["f16"] == 2.0
    assert per_token["affine:4:64"] == pytest.approx(0.5 + 4 / 64)  # codes + f16 scale and bias
    assert per_token["mxfp4"] == pytest.approx(0.5 + 1 / 32)


def test_cache_bad_input(rng):
    with pytest.raises(ValueError, match="dim_k"):
        qsdpa.Cache(1, 1, 1, 100)
    with pytest.raises(ValueError):
        qsdpa.Cache(0, 1, 1, 128)
    with pytest.raises(ValueError):
        qsdpa.Cache(1, 1, 1, 128, k_format="affine:7:64")
    c = qsdpa.Cache(2, 1, 2, 64, residual=4)
    k = rng.standard_normal((1, 2, 3, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="empty"):
        c.attend(0, rng.standard_normal((1, 2, 1, 64)).astype(np.float32))
    with pytest.raises(ValueError, match="layer"):
        c.append(2, k, k)
    with pytest.raises(ValueError):
        c.append(0, k, k[:, :, :2])
    with pytest.raises(ValueError):
        c.append(0, k[:, :1], k[:, :1])
    with pytest.raises(TypeError):
        c.append(0, k.astype(np.int16), k)
    assert c.length(0) == 0
    c.append(0, k, k)
    with pytest.raises(ValueError):
        c.trim(4)
    with pytest.raises(ValueError):
        c.attend(0, rng.standard_normal((1, 2, 1, 64)).astype(np.float32), mask=np.ones((1, 5), bool))
    assert c.length(0) == 3


def test_file_layout_as_documented(rng, tmp_path):
    """docs/CACHE_FORMAT.md, read with struct and zlib only."""
    import struct
    import zlib
    b, h, dk, dv, n, r = 1, 2, 128, 64, 21, 4
    cache = qsdpa.Cache(2, b, h, dk, dim_v=dv, k_format="affine:4:64", v_format="mxfp4", scale_dtype="f16",
                        residual=r, residual_dtype="f32", step=16)
    for layer in range(2):
        cache.append(layer, rng.standard_normal((b, h, n, dk)).astype(np.float32),
                     rng.standard_normal((b, h, n, dv)).astype(np.float32))
    path = tmp_path / "c.qkv"
    cache.save(path)
    data = path.read_bytes()
    assert data[:8] == b"QSDPAKV\0" and struct.unpack_from("<I", data, 8)[0] == 1
    hsize = struct.unpack_from("<I", data, 12)[0]
    assert hsize == 120 + 16 * 2 + 4
    assert struct.unpack_from("<7q", data, 16) == (2, b, h, dk, dv, 16, r)
    assert struct.unpack_from("<2I", data, 72) == (1, 0)  # f16 scales, f32 window
    assert struct.unpack_from("<4I", data, 80) == (1, 4, 64, 0)
    assert struct.unpack_from("<4I", data, 100) == (2, 4, 32, 0)
    assert zlib.crc32(data[:hsize - 4]) == struct.unpack_from("<I", data, hsize - 4)[0]
    qlen, rlen = struct.unpack_from("<2q", data, 120)
    assert (qlen, rlen) == (n - r, r)
    sizes = [b * h * qlen * dk // 2, b * h * qlen * dk // 64 * 2, b * h * qlen * dk // 64 * 2,  # K affine
             b * h * qlen * dv // 2, b * h * qlen * dv // 32,                                     # V mxfp4
             b * h * rlen * dk * 4, b * h * rlen * dv * 4]                                        # windows
    payload = data[hsize:hsize + sum(sizes)]
    assert zlib.crc32(payload) == struct.unpack_from("<I", data, hsize + sum(sizes))[0]
    codes = np.frombuffer(payload, np.uint32, sizes[0] // 4).reshape(b, h, qlen, -1)
    assert np.array_equal(codes, cache.view(0)[0][0])
    kwin = np.frombuffer(payload, np.float32, sizes[5] // 4, sum(sizes[:5])).reshape(b, h, rlen, dk)
    assert np.array_equal(kwin, cache.view(0, "residual")[0][0])
    assert len(data) == hsize + 2 * (sum(sizes) + 4)
