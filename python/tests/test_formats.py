"""qsdpa.quantize / qsdpa.dequantize against mx.quantize / mx.dequantize, bit for bit."""
import numpy as np
import pytest

import qsdpa
from conftest import mx_dequantize, mx_quantize

FORMATS = [("affine", g, b) for g in (32, 64, 128) for b in (2, 3, 4, 5, 6, 8)] + [
    ("mxfp4", None, None), ("mxfp8", None, None), ("nvfp4", None, None)]


@pytest.mark.parametrize("mode,group,bits", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_quantize_matches_mlx(rng, mode, group, bits, dtype):
    x = (rng.standard_normal((3, 5, 256)) * rng.uniform(0.01, 10)).astype(dtype)
    x[0, 0, :32] = 0.5  # a constant group
    x[1, 2, 7] = 40.0   # an outlier
    got = qsdpa.quantize(x, group_size=group, bits=bits, mode=mode)
    want = mx_quantize(x, mode, group, bits)
    assert len(got) == (3 if mode == "affine" else 2)
    for g, w, name in zip(got, want, ("w_q", "scales", "biases")):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert np.array_equal(g.view(np.uint8), w.view(np.uint8)), f"{name} differs from mx.quantize"
    deq = qsdpa.dequantize(*got, group_size=group, bits=bits, mode=mode, dtype=np.float32)
    ref = mx_dequantize(*want, mode, group, bits) if mode == "affine" else mx_dequantize(want[0], want[1], None, mode)
    assert deq.shape == x.shape
    assert np.array_equal(deq, ref), f"dequantize differs from mx.dequantize by {np.abs(deq - ref).max()}"


def test_quantize_accepts_strided_and_mlx_arrays(rng):
    import mlx.core as mx
    base = rng.standard_normal((4, 200)).astype(np.float32)
    view = base[:, 8:136]  # non-contiguous rows
    a = qsdpa.quantize(view)
    b = qsdpa.quantize(mx.array(np.ascontiguousarray(view)))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_quantize_bad_input():
    with pytest.raises(ValueError, match="group"):
        qsdpa.quantize(np.ones((2, 100), np.float32))
    with pytest.raises(TypeError):
        qsdpa.quantize(np.ones((2, 64), np.int32))
    with pytest.raises(ValueError, match="mode"):
        qsdpa.quantize(np.ones((2, 64), np.float32), mode="int4")
    with pytest.raises(ValueError):
        qsdpa.quantize(np.ones((2, 64), np.float32), bits=7)
    with pytest.raises(ValueError):
        qsdpa.quantize(np.ones((2, 64), np.float32), mode="mxfp4", group_size=64)
