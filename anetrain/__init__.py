"""anetrain: train Llama-2-style transformers on Apple's Neural Engine.

The native extension (anetrain._native) holds the hot path. On Linux its BLAS comes from the
scipy-openblas32 wheel, which must be loaded before the extension so the dynamic linker can
resolve it from any install location.
"""
import os as _os
import sys as _sys

if _sys.platform.startswith("linux"):
    import scipy_openblas32 as _sob  # noqa: F401  (loads libscipy_openblas.so RTLD_GLOBAL)

from . import _native  # noqa: E402
from . import fp16  # noqa: E402,F401
from ._native import BackendError, CompileBudgetExceeded, MilError  # noqa: E402,F401
from . import kernels  # noqa: E402,F401
from .generation import generate  # noqa: E402,F401

__version__ = "0.1.0"


def set_num_threads(n):
    """Threads for anetrain's CPU work: its pool, across which the BLAS products are split too
    (ANETRAIN_NUM_THREADS sets the same at start)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads needs at least 1 thread, got {n}")
    _native.set_num_threads(n)
    _native.blas_set_threads(n)


def available_backends():
    """Names of the backends this machine can run, best first (anetrain.backends makes them)."""
    return (["ane"] if _native.ane_available() else []) + ["ref"]


def info():
    """A dict naming this build: platform, SIMD path, BLAS library and core type, threads, backends."""
    d = dict(_native.build_info())
    d["version"] = __version__
    d["backends"] = available_backends()
    d["openblas_coretype_env"] = _os.environ.get("OPENBLAS_CORETYPE", "")
    return d
