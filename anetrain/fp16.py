"""IEEE half <-> single conversion on NumPy arrays through anetrain's SIMD kernels.

Round-to-nearest-even, subnormals kept, overflow to inf, NaN stays NaN: bit-exact with
``numpy.astype`` but several times faster on large arrays.
"""
import numpy as np

from . import _native


def _contiguous(x, dtype, what):
    a = np.asarray(x)
    if a.dtype != dtype:
        raise TypeError(f"{what} expects a {np.dtype(dtype).name} array, got {a.dtype.name}; convert it first")
    return np.ascontiguousarray(a)


def _target(out, like, dtype):
    if out is None:
        # Recycled memory: repeated conversions of same-sized arrays skip the page faults a
        # fresh allocation costs (anetrain._native.buffer_cache_clear() returns it).
        return _native.cached_array(np.dtype(dtype), like.shape)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != like.shape:
        raise ValueError(f"out must be a {np.dtype(dtype).name} array of shape {like.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writable C-contiguous array")
    return out


def to_half(x, out=None):
    """float32 array -> float16 array (new, or written into ``out``)."""
    src = _contiguous(x, np.float32, "to_half")
    dst = _target(out, src, np.float16)
    _native.fp16_encode(src, dst)
    return dst


def to_float(x, out=None):
    """float16 array -> float32 array (new, or written into ``out``)."""
    src = _contiguous(x, np.float16, "to_float")
    dst = _target(out, src, np.float32)
    _native.fp16_decode(src, dst)
    return dst


def round_to_half(x, out=None):
    """float32 array -> float32 array holding the nearest half of every element."""
    src = _contiguous(x, np.float32, "round_to_half")
    dst = _target(out, src, np.float32)
    _native.fp16_round(src, dst)
    return dst


def paths():
    """fp16 kernel sets available on this CPU (scalar always; f16c/avx512 on x86; neon on arm64)."""
    return list(_native.fp16_paths())


def active_path():
    return _native.fp16_path()


def set_path(name):
    """Select a kernel set for the whole process ('auto' restores the fastest)."""
    _native.fp16_set_path(name)
