"""Array descriptors for the C extension, and views of C memory as arrays.

A descriptor is (data pointer, qsdpa dtype code, shape, element strides). It
is read, without copying anything (strided views included), from
``__array_interface__`` (NumPy), from a DLPack capsule (``__dlpack__``:
PyTorch, CuPy, JAX, NumPy; host or CUDA memory, bfloat16 included) or from
``__cuda_array_interface__`` (CuPy, PyTorch, Numba). Other array types (MLX)
go through ``np.asarray``, which shares their memory where it can.
"""
import ctypes

import numpy as np

# qsdpa_dtype values (include/qsdpa.h).
F32, F16, BF16, U8, BOOL, U32 = 0, 1, 2, 3, 4, 5
DTYPE_CODES = {"f32": F32, "f16": F16, "bf16": BF16, "u8": U8, "bool": BOOL, "u32": U32}
_TYPESTR = {F32: "<f4", F16: "<f2", BF16: "<V2", U8: "|u1", BOOL: "|b1", U32: "<u4"}
_NUMPY = {"float32": F32, "float16": F16, "bfloat16": BF16, "uint8": U8, "bool": BOOL, "uint32": U32}
_CUDA_TYPESTR = {"<f4": F32, "<f2": F16, "|u1": U8, "|b1": BOOL, "<u4": U32}


_NP_CODES = {np.dtype(np.float32): F32, np.dtype(np.float16): F16, np.dtype(np.uint8): U8, np.dtype(np.bool_): BOOL,
             np.dtype(np.uint32): U32}


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
            raise TypeError("bfloat16 arrays need the ml_dtypes package (a dependency of qsdpa: pip install ml_dtypes)") from e
    return np.dtype({F32: np.float32, F16: np.float16, U8: np.uint8, BOOL: np.bool_, U32: np.uint32}[code])


# ---- DLPack (dlpack.h, ABI stable since v0.5) --------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_KDLCPU, _KDLCUDA, _KDLCUDAHOST, _KDLCUDAMANAGED = 1, 2, 3, 13
_DL_CODES = {(2, 32): F32, (2, 16): F16, (4, 16): BF16, (1, 8): U8, (6, 8): BOOL, (1, 32): U32}  # (code, bits)
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _is_cuda_dlpack(a):
    dev = getattr(a, "__dlpack_device__", None)
    return dev is not None and dev()[0] in (_KDLCUDA, _KDLCUDAMANAGED)


def device_index(a):
    """The CUDA ordinal of a device array (DLPack's device id; 0 where the array does not say)."""
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None:
        return int(dev()[1])
    device = getattr(a, "device", None)
    return int(getattr(device, "index", None) or getattr(device, "id", None) or 0)


def is_device_array(a):
    """Does a live in CUDA memory (DLPack device or __cuda_array_interface__)?"""
    if isinstance(a, np.ndarray):
        return False
    return _is_cuda_dlpack(a) or hasattr(a, "__cuda_array_interface__")


def _describe_dlpack(a, name):
    """Descriptor from the DLTensor of a.__dlpack__(). The capsule is not
    consumed: its destructor releases it, while `a` keeps the memory alive."""
    try:
        cap = a.__dlpack__(stream=None) if _is_cuda_dlpack(a) else a.__dlpack__()
    except TypeError:
        cap = a.__dlpack__()
    t = _DLTensor.from_address(_capsule_pointer(cap, b"dltensor"))
    if t.dtype.lanes != 1 or (t.dtype.code, t.dtype.bits) not in _DL_CODES:
        raise TypeError(f"{name}: DLPack dtype (code {t.dtype.code}, bits {t.dtype.bits}) is not supported")
    if t.device.device_type not in (_KDLCPU, _KDLCUDA, _KDLCUDAHOST, _KDLCUDAMANAGED):
        raise TypeError(f"{name}: DLPack device type {t.device.device_type} is not CPU or CUDA")
    code, ndim = _DL_CODES[(t.dtype.code, t.dtype.bits)], t.ndim
    if ndim < 1 or ndim > 4:
        raise ValueError(f"{name}: rank {ndim} is outside [1, 4]")
    shape = tuple(t.shape[i] for i in range(ndim))
    if t.strides:
        strides = tuple(t.strides[i] for i in range(ndim))
    else:  # NULL strides: compact row-major
        strides, acc = [], 1
        for s in reversed(shape):
            strides.append(acc)
            acc *= max(s, 1)
        strides = tuple(reversed(strides))
    return ((t.data or 0) + t.byte_offset, code, shape, strides)


def as_array(a, name):
    """a itself when it can be described without a copy (NumPy, DLPack, CUDA
    array interface), else a NumPy array sharing its memory where possible."""
    if isinstance(a, np.ndarray) or is_device_array(a):
        return a
    if hasattr(a, "__dlpack__"):  # torch, JAX, CuPy, MLX: described from the DLPack capsule
        return a
    try:
        return np.asarray(a)
    except Exception as e:
        raise TypeError(f"{name}: expected an array, got {type(a).__name__}") from e


def describe(a, name, writable=False):
    """Descriptor (ptr, dtype, shape, strides in elements) of an array without copying."""
    if not isinstance(a, np.ndarray) and hasattr(a, "__dlpack__"):
        return _describe_dlpack(a, name)
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
    dt = a.dtype
    code = _NP_CODES.get(dt)  # a dict lookup: dtype.name costs microseconds per call
    if code is None:
        try:
            code = dtype_code(dt)
        except TypeError as e:  # name the argument: float64 masks (np.where(m, 0., -1e9)) are the common case
            raise TypeError(f"{name}: {e}" + (" (cast it, e.g. .astype(np.float32))" if dt.kind == "f" else "")) from None
    if a.ndim < 1 or a.ndim > 4:
        raise ValueError(f"{name}: rank {a.ndim} is outside [1, 4]")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    item = dt.itemsize
    strides = a.strides
    elems = tuple(s // item for s in strides)
    if any(e * item != s for e, s in zip(elems, strides)):
        raise ValueError(f"{name}: strides {strides} are not multiples of the element size {item}")
    return (a.__array_interface__["data"][0], code, a.shape, elems)


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
