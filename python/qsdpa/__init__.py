"""qsdpa: scaled dot-product attention over a quantized KV cache.

A thin binding of the C library (include/qsdpa.h): the C code does all the
work; this module turns arrays into descriptors (no copies, strided views
included) and library errors into ValueError (bad argument, unsupported
request), OSError (cache files), MemoryError, RuntimeError (a CUDA call
failed); an argument of the wrong kind (not an array, a dtype the call does not
take, device memory for a CPU context) raises TypeError.

CUDA: calls are queued on the context's stream (the legacy default stream
unless Context(stream=...) or set_stream() names one) and return before the
work is done; synchronise that stream before reading the output from another.

    quantize(w, group_size=None, bits=None, mode="affine")      as mx.quantize
    dequantize(w, scales, biases=None, group_size=None, bits=None, mode="affine", dtype=None)
    attention(q, k, k_scales, k_biases, v, v_scales, v_biases, *, scale, mask=None,
              sinks=None, group_size=None, bits=None, mode="affine", causal=False, window=None)
                                                              as mx.fast.quantized_scaled_dot_product_attention
    Cache(...)                                               the quantized KV cache object
"""
import functools
import math

import numpy as np

from . import _qsdpa
from ._arrays import (BF16, F16, F32, as_array, describe, device_index, dtype_code, is_device_array,
                      numpy_dtype, view_of)

__all__ = ["quantize", "dequantize", "attention", "Cache", "Context", "cuda_available", "format_string",
           "__version__"]
__version__ = _qsdpa.version()

# mx.quantize's defaults per mode (group, bits).
_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "mxfp8": (32, 8), "nvfp4": (16, 4)}


@functools.lru_cache(maxsize=256)
def format_string(mode="affine", group_size=None, bits=None):
    """Canonical format text ("affine:4:64", "mxfp4", ...) of MLX-style arguments."""
    if mode not in _DEFAULTS:
        raise ValueError(f"mode = {mode!r} is not one of {sorted(_DEFAULTS)}")
    g0, b0 = _DEFAULTS[mode]
    g = g0 if group_size is None else int(group_size)
    b = b0 if bits is None else int(bits)
    text = f"affine:{b}:{g}" if mode == "affine" else mode
    canon, _, fbits, fgroup, _ = _qsdpa.format_info(text)
    if mode != "affine" and (fbits != b or fgroup != g):
        raise ValueError(f"mode {mode} has bits {fbits} and group_size {fgroup}, got bits {b}, group_size {g}")
    return canon


class Context:
    """Backend, threads and kernel choice; owns scratch memory. One is made on first use (a CPU one, or a
    CUDA one per device for device arrays). stream (CUDA): a cudaStream_t as an integer, or an object with
    .cuda_stream (torch.cuda.Stream) or .ptr (cupy.cuda.Stream); None = the legacy default stream."""

    def __init__(self, backend="cpu", num_threads=0, device=0, kernel=None, disable_simd=False, stream=None):
        codes = {"cpu": 0, "cuda": 1}
        if backend not in codes:
            raise ValueError(f"backend = {backend!r} is not 'cpu' or 'cuda'")
        self.backend = backend
        self._cap = _qsdpa.context_create(codes[backend], int(num_threads), int(device), kernel, int(disable_simd))
        if stream is not None:
            self.set_stream(stream)

    def set_stream(self, stream):
        """Run later CUDA calls on `stream` (as in the constructor); ValueError on a CPU context."""
        handle = getattr(stream, "cuda_stream", None)
        if handle is None:
            handle = getattr(stream, "ptr", stream)
        handle = int(handle)
        if not 0 <= handle < 2 ** 64:
            raise ValueError(f"stream = {handle}: not a cudaStream_t handle")
        _qsdpa.context_set_stream(self._cap, handle)
        self._stream = stream  # the context does not own the stream: keep its object (a CuPy Stream) alive

    @property
    def last_route(self):
        """The route the last attention call on this context took: the kernel-table entry's name, which a CUDA
        context refines to the kernel that ran and a CPU AVX-512 entry marks "+bf16" / "+bf16k" where its bf16 tiles ran
        (qsdpa_context_last_route); "" before the first call."""
        return _qsdpa.context_last_route(self._cap)


_default_context = None


_default_cuda_contexts = {}  # device ordinal -> Context("cuda", device=...)


def _context_of(context, array=None):
    """The Context to use: `context`, else a CPU one, or for a device array a CUDA one on its device."""
    global _default_context
    if context is not None:
        return context
    if array is not None and is_device_array(array):
        device = device_index(array)
        if device not in _default_cuda_contexts:
            _default_cuda_contexts[device] = Context("cuda", device=device)
        return _default_cuda_contexts[device]
    if _default_context is None:
        _default_context = Context()
    return _default_context


def _context(context, array=None):
    """The capsule of _context_of(context, array)."""
    return _context_of(context, array)._cap


def _host_only(ctx, named_arrays):
    """TypeError if a CPU context is handed device memory (its kernels would read device addresses)."""
    if ctx.backend != "cpu":
        return
    for name, a in named_arrays:
        if a is not None and is_device_array(a):
            raise TypeError(f"{name}: a device array, but the context is a CPU one (pass context=qsdpa.Context("
                            f"'cuda'), or q on the device so that the default context is a CUDA one)")


def cuda_available():
    """Is the CUDA backend compiled into this build (QSDPA_CUDA=1 pip install .) and a device present?"""
    return _qsdpa.backend_available(1)


def _float_input(a, name):
    """(array, descriptor) of a float32/float16/bfloat16 array, without a copy."""
    a = as_array(a, name)
    d = describe(a, name)
    if d[1] not in (F32, F16, BF16):
        raise TypeError(f"{name}: dtype {getattr(a, 'dtype', '?')} is not float32/float16/bfloat16")
    return a, d


def _host(a, name):
    """A NumPy array of a host array (shared memory where possible); TypeError for device arrays."""
    if is_device_array(a):
        raise TypeError(f"{name}: quantize/dequantize take host arrays (a device cache quantizes on append)")
    try:
        return np.asarray(a)
    except Exception as e:
        raise TypeError(f"{name}: expected an array, got {type(a).__name__}") from e


def quantize(w, group_size=None, bits=None, mode="affine"):
    """Quantize the last axis of w like mx.quantize (bit for bit with MLX on CPU).

    Returns (w_q, scales, biases) for affine and (w_q, scales) for the fp modes:
    w_q uint32 [..., D*bits/32]; scales w's dtype (affine) or uint8 [..., D/group].
    """
    fmt = format_string(mode, group_size, bits)
    _, _, b, g, has_biases = _qsdpa.format_info(fmt)
    w = np.ascontiguousarray(_host(w, "w"))
    if dtype_code(w.dtype) not in (F32, F16, BF16):
        raise TypeError(f"w: dtype {w.dtype} is not float32/float16/bfloat16")
    if w.ndim < 1 or w.shape[-1] % g:
        raise ValueError(f"w: last dim {w.shape[-1] if w.ndim else None} is not a multiple of group_size {g}")
    dim = w.shape[-1]
    rows = int(np.prod(w.shape[:-1], dtype=np.int64))
    codes = np.empty(w.shape[:-1] + (dim * b // 32,), np.uint32)
    sdtype = w.dtype if has_biases else np.dtype(np.uint8)
    scales = np.empty(w.shape[:-1] + (dim // g,), sdtype)
    biases = np.empty_like(scales) if has_biases else None
    _qsdpa.quantize(fmt, _ptr(w), dtype_code(w.dtype), rows, dim, _ptr(codes), _ptr(scales), _ptr(biases),
                    dtype_code(sdtype))
    return (codes, scales, biases) if has_biases else (codes, scales)


def dequantize(w, scales, biases=None, group_size=None, bits=None, mode="affine", dtype=None):
    """Inverse of quantize, as mx.dequantize. dtype defaults to the scales' dtype
    for affine and float32 for the fp modes (MLX gives bfloat16 there)."""
    fmt = format_string(mode, group_size, bits)
    _, _, b, g, has_biases = _qsdpa.format_info(fmt)
    w = np.ascontiguousarray(_host(w, "w"))
    scales = np.ascontiguousarray(_host(scales, "scales"))
    if has_biases and biases is None:
        raise ValueError("biases: required for mode affine")
    if biases is not None:
        biases = np.ascontiguousarray(_host(biases, "biases"))
    if w.dtype != np.uint32:
        raise TypeError(f"w: dtype {w.dtype} is not uint32")
    dim = w.shape[-1] * 32 // b
    rows = int(np.prod(w.shape[:-1], dtype=np.int64))
    if scales.shape != w.shape[:-1] + (dim // g,) or (biases is not None and biases.shape != scales.shape):
        raise ValueError(f"scales shape {scales.shape} does not match w {w.shape} with group_size {g}")
    if dtype is None:
        dtype = scales.dtype if has_biases else np.float32
    out = np.empty(w.shape[:-1] + (dim,), numpy_dtype(dtype_code(dtype)))
    _qsdpa.dequantize(fmt, _ptr(w), _ptr(scales), _ptr(biases), dtype_code(scales.dtype), rows, dim, _ptr(out),
                      dtype_code(out.dtype))
    return out


@functools.lru_cache(maxsize=256)
def _format_bits(fmt):
    return _qsdpa.format_info(fmt)[2]


def _ptr(a):
    return 0 if a is None else a.__array_interface__["data"][0]


def _qtensor(fmt, bits, codes, scales, biases, name):
    codes = as_array(codes, name)
    dim = codes.shape[-1] * 32 // bits
    return (fmt, dim, describe(codes, name), describe(as_array(scales, name + "_scales"), name + "_scales"),
            None if biases is None else describe(as_array(biases, name + "_biases"), name + "_biases"))


def _params(scale, mask, sinks, causal, window):
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask = {mask!r}: the only string mask is 'causal'")
        mask, causal = None, True
    m = None if mask is None else describe(as_array(mask, "mask"), "mask")
    s = None if sinks is None else describe(as_array(sinks, "sinks"), "sinks")
    if window is not None and (isinstance(window, bool) or int(window) != window):
        raise TypeError(f"window = {window!r} is not a whole number of keys")
    return (float(scale), m, int(bool(causal)), int(window or 0), s)


def _out(out, q, qd, dv):
    """The output array: `out` checked, or a new one of q's dtype: NumPy for host q
    (MLX included), torch/CuPy on q's device for device q."""
    shape = tuple(q.shape[:-1]) + (dv,)
    if out is None:
        if isinstance(q, np.ndarray):
            return np.empty(shape, q.dtype)
        if hasattr(q, "new_empty"):  # torch.Tensor, same device and dtype
            return q.new_empty(shape)
        if not is_device_array(q):
            return np.empty(shape, numpy_dtype(qd[1]))
        module = type(q).__module__.split(".")[0]
        if module == "cupy":
            import cupy
            return cupy.empty(shape, dtype=q.dtype)
        raise TypeError(f"out: pass an output array for q of type {type(q).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out: shape {tuple(out.shape)}, expected {shape}")
    return out


def attention(q, k, k_scales, k_biases, v, v_scales, v_biases, *, scale, mask=None, sinks=None, group_size=None,
              bits=None, mode="affine", causal=False, window=None, v_group_size=None, v_bits=None, v_mode=None,
              out=None, context=None):
    """Attention over quantized K/V, as mx.fast.quantized_scaled_dot_product_attention.

    q [B, Hq, Lq, D] float32/float16/bfloat16; k, v packed uint32 [B, Hkv, Lk, D*bits/32]
    with their scales (and biases for affine; None otherwise), e.g. from quantize()
    or mlx-lm's QuantizedKVCache (any strides, so views of a preallocated cache work).
    mask: None, "causal", a bool array (False = masked) or an additive float array,
    broadcastable to [B, Hq, Lq, Lk]; causal and an array mask together are an error
    (fold the causal part into the mask). sinks: [Hq] logits. window (with causal):
    keep the last `window` keys of each row. V may use another format (v_mode, v_bits,
    v_group_size): each one left unset is K's where v_mode is K's mode (or unset), else
    v_mode's MLX default. Returns out [B, Hq, Lq, Dv] in q's dtype. Without `context`,
    host q runs on a CPU context and device q on a CUDA context of q's device.
    """
    kfmt = format_string(mode, group_size, bits)
    same_mode = v_mode is None or v_mode == mode
    v_group = v_group_size if v_group_size is not None else group_size if same_mode else None
    vfmt = format_string(v_mode or mode, v_group, v_bits if v_bits is not None else bits if same_mode else None)
    ctx = _context_of(context, q)
    _host_only(ctx, [("q", q), ("k", k), ("k_scales", k_scales), ("k_biases", k_biases), ("v", v),
                     ("v_scales", v_scales), ("v_biases", v_biases), ("out", out),
                     ("mask", None if isinstance(mask, str) else mask), ("sinks", sinks)])
    q, qd = _float_input(q, "q")
    kd = _qtensor(kfmt, _format_bits(kfmt), k, k_scales, k_biases, "k")
    vd = _qtensor(vfmt, _format_bits(vfmt), v, v_scales, v_biases, "v")
    o = _out(out, q, qd, vd[1])
    _qsdpa.attention(ctx._cap, qd, kd, vd, _params(scale, mask, sinks, causal, window),
                     describe(o, "out", writable=True))
    return o


class Cache:
    """Quantized KV cache of `layers` layers, K [B, Hkv, L, dim_k], V [B, Hkv, L, dim_v].

    Rows are quantized on append (k_format/v_format: "affine:4:64", "affine:8:64",
    "mxfp4", "mxfp8", "nvfp4", "f16", ...); capacity grows `step` tokens at a time
    without re-quantizing; `residual` newest tokens stay unquantized (KIVI).
    """

    def __init__(self, layers, batch, heads_kv, dim_k, dim_v=None, k_format="affine:4:64", v_format=None,
                 scale_dtype="f16", step=256, residual=0, residual_dtype="f16", context=None, _cap=None):
        # The cache lives in its context's memory: context=qsdpa.Context("cuda") puts it on the GPU
        # (then append/attend take device arrays: torch/CuPy tensors, via DLPack).
        self._context = context
        if _cap is not None:
            self._cap = _cap
            return
        self._cap = _qsdpa.cache_create(_context(context), int(layers), int(batch), int(heads_kv), int(dim_k),
                                        int(dim_k if dim_v is None else dim_v), k_format, v_format or k_format,
                                        dtype_code(scale_dtype), int(step), int(residual), dtype_code(residual_dtype))

    @classmethod
    def load(cls, path, context=None):
        """A cache read from a file written by save() (OSError if truncated or corrupt)."""
        return cls(0, 0, 0, 0, context=context, _cap=_qsdpa.cache_load(_context(context), str(path)))

    def save(self, path):
        _qsdpa.cache_save(self._cap, str(path))

    @property
    def options(self):
        """The cache's options as a dict (fixed at creation)."""
        return dict(self._options)

    @functools.cached_property
    def _options(self):
        return _qsdpa.cache_options(self._cap)

    def append(self, layer, k, v):
        """Append k [B, Hkv, T, dim_k] and v [B, Hkv, T, dim_v] (float32/float16/bfloat16, any strides)."""
        ctx = _context_of(self._context)
        _host_only(ctx, [("k", k), ("v", v)])
        (k, kd), (v, vd) = _float_input(k, "k"), _float_input(v, "v")
        _qsdpa.cache_append(ctx._cap, self._cap, int(layer), kd, vd)

    def attend(self, layer, q, *, scale=None, mask=None, sinks=None, causal=False, window=None, out=None):
        """Attention of q [B, Hq, Lq, dim_k] over the layer's tokens; the queries are the
        newest Lq positions for causal/window (causal and an array mask together are an error).
        scale defaults to 1/sqrt(dim_k)."""
        ctx = _context_of(self._context)
        _host_only(ctx, [("q", q), ("out", out), ("mask", None if isinstance(mask, str) else mask),
                         ("sinks", sinks)])
        q, qd = _float_input(q, "q")
        opts = self._options
        if scale is None:
            scale = 1.0 / math.sqrt(opts["dim_k"])
        o = _out(out, q, qd, opts["dim_v"])
        _qsdpa.cache_attend(ctx._cap, self._cap, int(layer), qd, _params(scale, mask, sinks, causal, window),
                            describe(o, "out", writable=True))
        return o

    def trim(self, n):
        """Drop the newest n tokens of every layer (speculative-decoding roll-back)."""
        _qsdpa.cache_trim(self._cap, int(n))

    def length(self, layer=0):
        return _qsdpa.cache_length(self._cap, int(layer))

    @property
    def offset(self):
        """Tokens in layer 0 (mlx-lm's cache.offset)."""
        return self.length(0)

    @property
    def nbytes(self):
        """Bytes the stored tokens occupy (codes, scales, biases, window rows)."""
        return _qsdpa.cache_memory(self._cap)[1]

    @property
    def allocated_bytes(self):
        return _qsdpa.cache_memory(self._cap)[0]

    def view(self, layer, part="quantized"):
        """Read-only arrays over one layer's storage, no copy: ((k, k_scales, k_biases),
        (v, v_scales, v_biases)) for part "quantized" (strided: capacity > length),
        or ((k,), (v,)) rows for part "residual". Valid until the next append/trim."""
        if self._context is not None and self._context.backend == "cuda":
            raise ValueError("view: the cache is in device memory; views are NumPy arrays of host caches")
        code = {"quantized": 0, "residual": 1}[part]
        kd, vd = _qsdpa.cache_view(self._cap, int(layer), code)
        if code == 1:
            return (view_of(kd[2], self),), (view_of(vd[2], self),)
        return tuple(tuple(view_of(x, self) for x in d[2:]) for d in (kd, vd))
