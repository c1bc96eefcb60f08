"""Arrays from other frameworks without copies: DLPack (MLX on the host here;
PyTorch/CuPy CUDA tensors on a CUDA build) and the CUDA backend through the
Python API. The CUDA tests need `QSDPA_CUDA=1 pip install .`, a GPU and torch;
elsewhere they are skipped (the C suite covers the CUDA library itself)."""
import numpy as np
import pytest

import qsdpa
from conftest import assert_close_spec, reference


def test_dlpack_host_arrays_match_numpy(rng):
    """MLX arrays are read through DLPack (bfloat16 included), no copy, same result as NumPy."""
    mx = pytest.importorskip("mlx.core")  # the MLX tests proper fail without mlx; this one is about DLPack
    q = rng.standard_normal((1, 4, 2, 64)).astype(np.float32)
    kv = rng.standard_normal((1, 2, 50, 64)).astype(np.float32)
    kq = qsdpa.quantize(kv, 64, 8)
    want = qsdpa.attention(q, *kq, *kq, scale=0.125, group_size=64, bits=8)
    got = qsdpa.attention(mx.array(q), *[mx.array(x) for x in kq], *[mx.array(x) for x in kq], scale=0.125,
                          group_size=64, bits=8, out=np.empty_like(want))
    assert np.array_equal(got, want)
    qb = mx.array(q).astype(mx.bfloat16)
    outb = np.empty((1, 4, 2, 64), np.float32)
    with pytest.raises(ValueError):  # out must have q's dtype (bf16): the library says so
        qsdpa.attention(qb, *kq, *kq, scale=0.125, group_size=64, bits=8, out=outb)


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not qsdpa.cuda_available():
        pytest.skip("qsdpa built without CUDA (QSDPA_CUDA=1 pip install .)")
    return torch


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_cuda_attention(rng, dtype):
    torch = _torch_cuda()
    b, hq, hkv, lq, lk, d = 1, 8, 2, 3, 300, 128
    q = rng.standard_normal((b, hq, lq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    kq, vq = qsdpa.quantize(k, 64, 4), qsdpa.quantize(v, 64, 4)
    kd = qsdpa.dequantize(*kq, 64, 4, dtype=np.float32)
    vd = qsdpa.dequantize(*vq, 64, 4, dtype=np.float32)
    tdt = getattr(torch, dtype)
    tq = torch.from_numpy(q).to("cuda", tdt)
    dev = [torch.from_numpy(x).cuda() for x in kq + vq]
    out = qsdpa.attention(tq, *dev, scale=d ** -0.5, causal=True)
    assert out.is_cuda and out.dtype == tdt and tuple(out.shape) == (b, hq, lq, d)
    want = reference(tq.float().cpu().numpy(), kd, vd, d ** -0.5, causal=True)
    err = float(np.abs(out.float().cpu().numpy() - want).max())
    tol = (2e-3 if dtype == "float16" else 1.6e-2) * float(np.abs(vd).max())
    assert err <= tol, f"{dtype}: {err} > {tol}"
    with pytest.raises(ValueError):  # host q with device K/V: the library names the host pointer
        qsdpa.attention(torch.from_numpy(q), *dev, scale=0.1, context=qsdpa.Context("cuda"),
                        out=torch.empty((b, hq, lq, d), device="cuda"))


def test_torch_cuda_cache(rng):
    torch = _torch_cuda()
    ctx = qsdpa.Context("cuda")
    b, hkv, hq, d = 1, 2, 8, 128
    dc = qsdpa.Cache(2, b, hkv, d, k_format="affine:4:64", v_format="mxfp4", residual=8, residual_dtype="f32",
                     context=ctx)
    hc = qsdpa.Cache(2, b, hkv, d, k_format="affine:4:64", v_format="mxfp4", residual=8, residual_dtype="f32")
    for step in range(6):
        t = 20 if step == 0 else 1
        for layer in range(2):
            k = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
            v = rng.standard_normal((b, hkv, t, d)).astype(np.float32)
            dc.append(layer, torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda())
            hc.append(layer, k, v)
        q = rng.standard_normal((b, hq, t, d)).astype(np.float32)
        out = dc.attend(0, torch.from_numpy(q).cuda(), causal=True)
        want = hc.attend(0, q, causal=True)
        assert out.is_cuda
        assert np.abs(out.cpu().numpy() - want).max() <= 1e-4 * 4
    assert dc.length(1) == hc.length(1) == 25
    with pytest.raises(ValueError):
        dc.view(0)
