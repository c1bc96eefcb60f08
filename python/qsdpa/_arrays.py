"""Array descriptors for the C extension, and views of C memory as arrays.

A descriptor is (data pointer, qsdpa dtype code, shape, element strides). It
is read from ``__array_interface__`` (NumPy; MLX and others convert through
``np.asarray`` without a copy where they can) or ``__cuda_array_interface__``
(CuPy, PyTorch CUDA tensors), so no data is copied, strided views included.
"""
import numpy as np

# qsdpa_dtype values (include/qsdpa.h).
F32, F16, BF16, U8, BOOL, U32 = 0, 1, 2, 3, 4, 5
DTYPE_CODES = {"f32": F32, "f16": F16, "bf16": BF16, "u8": U8, "bool": BOOL, "u32": U32}
_TYPESTR = {F32: "<f4", F16: "<f2", BF16: "<V2", U8: "|u1", BOOL: "|b1", U32: "<u4"}
_NUMPY = {"float32": F32, "float16": F16, "bfloat16": BF16, "uint8": U8, "bool": BOOL, "uint32": U32}
_CUDA_TYPESTR = {"<f4": F32, "<f2": F16, "|u1": U8, "|b1": BOOL, "<u4": U32}


def dtype_code(dtype):
    """qsdpa dtype code of a NumPy dtype or a name ("f16", "float16", ...)."""
    if isinstance(dtype, str) and dtype in DTYPE_CODES:
        return DTYPE_CODES[dtype]
    name = np.dtype(dtype).name if not isinstance(dtype, str) or dtype != "bfloat16" else dtype
    if name not in _NUMPY:
        raise TypeError(f"dtype {name} is not supported (float32, float16, bfloat16, uint8, bool, uint32)")
    return _NUMPY[name]


def numpy_dtype(code):
    """NumPy dtype of a qsdpa dtype code (bfloat16 needs ml_dtypes)."""
    if code == BF16:
        try:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise TypeError("bfloat16 arrays need the ml_dtypes package") from e
    return np.dtype({F32: np.float32, F16: np.float16, U8: np.uint8, BOOL: np.bool_, U32: np.uint32}[code])


def is_device_array(a):
    return hasattr(a, "__cuda_array_interface__")


def as_array(a, name):
    """A NumPy array sharing a's memory where possible (TypeError if not array-like)."""
    if isinstance(a, np.ndarray):
        return a
    if is_device_array(a):
        return a
    try:
        return np.asarray(a)
    except Exception as e:
        raise TypeError(f"{name}: expected an array, got {type(a).__name__}") from e


def describe(a, name, writable=False):
    """Descriptor (ptr, dtype, shape, strides in elements) of an array without copying."""
    if is_device_array(a):
        iface = a.__cuda_array_interface__
        code = _CUDA_TYPESTR.get(iface["typestr"])
        if code is None:
            if "bfloat16" in str(getattr(a, "dtype", "")):
                code = BF16
            else:
                raise TypeError(f"{name}: device dtype {iface['typestr']} is not supported")
        shape = tuple(int(s) for s in iface["shape"])
        item = 2 if code in (F16, BF16) else (1 if code in (U8, BOOL) else 4)
        if iface.get("strides") is None:
            strides, acc = [], 1
            for s in reversed(shape):
                strides.append(acc)
                acc *= max(s, 1)
            strides = tuple(reversed(strides))
        else:
            strides = tuple(int(s) // item for s in iface["strides"])
        return (int(iface["data"][0]), code, shape, strides)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(a).__name__}")
    code = dtype_code(a.dtype)
    if a.ndim < 1 or a.ndim > 4:
        raise ValueError(f"{name}: rank {a.ndim} is outside [1, 4]")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    item = a.dtype.itemsize
    if any(s % item for s in a.strides):
        raise ValueError(f"{name}: strides {a.strides} are not multiples of the element size {item}")
    ptr = a.__array_interface__["data"][0]
    return (ptr, code, tuple(int(s) for s in a.shape), tuple(int(s) // item for s in a.strides))


class _Window:
    """Exposes C memory through __array_interface__, keeping its owner alive."""

    def __init__(self, desc, owner, readonly=True):
        ptr, code, shape, strides = desc
        item = numpy_dtype(code).itemsize
        self._owner = owner
        self.__array_interface__ = {
            "version": 3,
            "data": (ptr, readonly),
            "shape": shape,
            "strides": tuple(s * item for s in strides),
            "typestr": numpy_dtype(code).str if code != BF16 else _TYPESTR[BF16],
        }


def view_of(desc, owner, readonly=True):
    """NumPy array over C memory described by desc (no copy); None stays None."""
    if desc is None:
        return None
    code = desc[1]
    if 0 in desc[2]:
        return np.empty(desc[2], numpy_dtype(code))
    arr = np.asarray(_Window(desc, owner, readonly))
    if code == BF16:
        arr = arr.view(numpy_dtype(BF16))
    return arr
