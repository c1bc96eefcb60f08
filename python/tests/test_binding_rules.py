"""The binding's own rules, on the CPU: device memory is refused by CPU contexts before any C code reads it;
V's format defaults follow K's; streams are for CUDA contexts only."""
import numpy as np
import pytest

import qsdpa


class FakeDeviceArray:
    """Claims to live on CUDA device 1 (DLPack kDLCUDA = 2) and fails the test if anything reads it."""

    shape = (1, 2, 4, 64)

    def __dlpack_device__(self):
        return (2, 1)

    def __dlpack__(self, *args, **kwargs):
        raise AssertionError("the binding read a device array on a CPU context")

    @property
    def __array_interface__(self):
        raise AssertionError("the binding read a device array on a CPU context")


def _kv(rng, group=64, bits=4, lk=32, d=64):
    k = rng.standard_normal((1, 1, lk, d)).astype(np.float32)
    v = rng.standard_normal((1, 1, lk, d)).astype(np.float32)
    return (qsdpa.quantize(k, group_size=group, bits=bits), qsdpa.quantize(v, group_size=group, bits=bits))


@pytest.mark.parametrize("slot", ["k", "k_scales", "v", "v_biases", "out", "mask", "sinks"])
def test_cpu_context_refuses_device_arrays(rng, slot):
    (kq, ks, kb), (vq, vs, vb) = _kv(rng)
    q = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    args = dict(k=kq, k_scales=ks, k_biases=kb, v=vq, v_scales=vs, v_biases=vb)
    extra = {}
    if slot in args:
        args[slot] = FakeDeviceArray()
    else:
        extra[slot] = FakeDeviceArray()
    with pytest.raises(TypeError, match=f"{slot}: a device array, but the context is a CPU one"):
        qsdpa.attention(q, args["k"], args["k_scales"], args["k_biases"], args["v"], args["v_scales"],
                        args["v_biases"], scale=0.125, **extra)


def test_host_cache_refuses_device_arrays(rng):
    cache = qsdpa.Cache(1, 1, 1, 64)
    rows = rng.standard_normal((1, 1, 3, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="k: a device array"):
        cache.append(0, FakeDeviceArray(), rows)
    with pytest.raises(TypeError, match="v: a device array"):
        cache.append(0, rows, FakeDeviceArray())
    cache.append(0, rows, rows)
    with pytest.raises(TypeError, match="q: a device array"):
        cache.attend(0, FakeDeviceArray())
    assert cache.length() == 3


@pytest.mark.parametrize("group,bits", [(32, 4), (128, 8), (32, 6)])
def test_v_format_defaults_follow_k(rng, group, bits):
    """v_mode equal to K's mode with v_group_size / v_bits unset means K's group and bits (not MLX's
    affine defaults 64 / 4, which would not match V's arrays)."""
    (kq, ks, kb), (vq, vs, vb) = _kv(rng, group, bits, d=128)
    q = rng.standard_normal((1, 2, 4, 128)).astype(np.float32)
    want = qsdpa.attention(q, kq, ks, kb, vq, vs, vb, scale=0.125, group_size=group, bits=bits)
    got = qsdpa.attention(q, kq, ks, kb, vq, vs, vb, scale=0.125, group_size=group, bits=bits, v_mode="affine")
    assert np.array_equal(got, want)


def test_v_format_of_another_mode_takes_its_defaults(rng):
    """K affine 8-bit g32, V mxfp4 (v_mode alone: mxfp4's own group 32 and bits 4)."""
    k = rng.standard_normal((1, 1, 32, 64)).astype(np.float32)
    v = rng.standard_normal((1, 1, 32, 64)).astype(np.float32)
    kq, ks, kb = qsdpa.quantize(k, group_size=32, bits=8)
    vq, vs = qsdpa.quantize(v, mode="mxfp4")
    q = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    out = qsdpa.attention(q, kq, ks, kb, vq, vs, None, scale=0.125, group_size=32, bits=8, v_mode="mxfp4")
    assert out.shape == (1, 2, 4, 64) and np.isfinite(out).all()


def test_stream_on_cpu_context_is_an_error():
    ctx = qsdpa.Context("cpu")
    with pytest.raises(ValueError, match="CPU context"):
        ctx.set_stream(0)
    with pytest.raises(ValueError, match="CPU context"):
        qsdpa.Context("cpu", stream=0)
    with pytest.raises(ValueError, match="not a cudaStream_t"):
        ctx.set_stream(-1)


def test_float64_mask_error_names_the_argument(rng):
    (kq, ks, kb), (vq, vs, vb) = _kv(rng)
    q = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    mask = np.where(rng.random((4, 32)) < 0.5, 0.0, -1e9)  # float64, as np.where makes it
    with pytest.raises(TypeError, match=r"mask: dtype float64 is not supported.*astype\(np.float32\)"):
        qsdpa.attention(q, kq, ks, kb, vq, vs, vb, scale=0.125, mask=mask)


@pytest.mark.parametrize("window", [2.5, True])
def test_window_must_be_a_whole_number(rng, window):
    (kq, ks, kb), (vq, vs, vb) = _kv(rng)
    q = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="window"):
        qsdpa.attention(q, kq, ks, kb, vq, vs, vb, scale=0.125, causal=True, window=window)
    out = qsdpa.attention(q, kq, ks, kb, vq, vs, vb, scale=0.125, causal=True, window=np.int64(3))  # integers of any type
    assert np.isfinite(out).all()


def test_bf16_mlx_query_gives_a_bf16_result(rng):
    """MLX's bfloat16 arrays in, a NumPy bfloat16 array out (ml_dtypes, a dependency), within bf16's bound."""
    import mlx.core as mx

    (kq, ks, kb), (vq, vs, vb) = _kv(rng)
    q = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    qb = mx.array(q).astype(mx.bfloat16)
    out = qsdpa.attention(qb, kq, ks, kb, vq, vs, vb, scale=0.125)
    assert out.dtype.name == "bfloat16" and out.shape == (1, 2, 4, 64)
    want = qsdpa.attention(np.array(qb.astype(mx.float32)), kq, ks, kb, vq, vs, vb, scale=0.125)
    vmax = np.abs(qsdpa.dequantize(vq, vs, vb, group_size=64, bits=4)).max()
    assert np.abs(out.astype(np.float32) - want).max() <= 1.6e-2 * vmax
