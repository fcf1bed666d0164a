"""Compile MIL programs into callable kernels (the notebook API).

    k = anetrain.kernels.compile(mil_text, weights={"@model_path/weights/w.bin": blob})
    y = k(x)                       # one output -> an array; several -> a tuple in return order
    k.eval_into([x], [y])          # preallocated outputs, no allocation per call

Backends: "ref" (the CPU reference executor, everywhere) and "ane" (Apple Neural Engine, macOS).
"""
from collections import namedtuple

import numpy as np

from . import _native, ane
from ._native import BackendError, CompileBudgetExceeded, MilError  # noqa: F401
from .backends import Backend, get_backend, new_backend  # noqa: F401  (the notebook API names them here too)
from .config import kernel_shape

TensorInfo = namedtuple("TensorInfo", "name dtype shape")

_NUMPY = {
    "fp16": np.float16,
    "fp32": np.float32,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}
class Kernel:
    """A compiled MIL program. Call with arrays (positional or by input name)."""

    def __init__(self, native, backend):
        self._native = native
        self.backend = backend
        self.inputs = [TensorInfo(n, d, tuple(s)) for n, d, s in native.inputs]
        self.outputs = [TensorInfo(n, d, tuple(s)) for n, d, s in native.outputs]
        self.name = native.label
        self.runs_on = native.backend_name      # where it runs: "ane" or "ref"
        self.placement_note = native.placement_note  # why not where asked ('' when it is)

    def __call__(self, *arrays, **named):
        ins = self._gather(arrays, named)
        outs = [np.empty(o.shape, _numpy_dtype(o)) for o in self.outputs]
        self._native.eval(ins, outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def eval_into(self, inputs, outputs):
        """Evaluate into preallocated arrays. fp16 tensors may be float16 or float32 arrays."""
        ins = self._gather(tuple(inputs), {})
        if len(outputs) != len(self.outputs):
            raise ValueError(f"kernel {self.name!r} has {len(self.outputs)} outputs, got {len(outputs)} arrays")
        for info, arr in zip(self.outputs, outputs):
            _check_array(arr, info, "output", writable=True)
        self._native.eval(ins, list(outputs))
        return outputs

    def _gather(self, arrays, named):
        if arrays and named:
            raise TypeError("pass inputs either positionally or by name, not both")
        if named:
            unknown = set(named) - {i.name for i in self.inputs}
            if unknown:
                raise TypeError(f"unknown input(s) {sorted(unknown)}; inputs are {[i.name for i in self.inputs]}")
            missing = [i.name for i in self.inputs if i.name not in named]
            if missing:
                raise TypeError(f"missing input(s) {missing}")
            arrays = tuple(named[i.name] for i in self.inputs)
        if len(arrays) != len(self.inputs):
            raise TypeError(f"kernel {self.name!r} takes {len(self.inputs)} input(s) "
                            f"{[i.name for i in self.inputs]}, got {len(arrays)}")
        out = []
        for info, arr in zip(self.inputs, arrays):
            _check_array(arr, info, "input", writable=False)
            out.append(np.ascontiguousarray(arr))
        return out

    def __repr__(self):
        sig = ", ".join(f"{i.name}: {i.dtype}{list(i.shape)}" for i in self.inputs)
        res = ", ".join(f"{o.name}: {o.dtype}{list(o.shape)}" for o in self.outputs)
        return f"<Kernel {self.name!r} on {self.backend.name}: ({sig}) -> ({res})>"


def _numpy_dtype(info):
    return _NUMPY[info.dtype]


def _check_array(arr, info, what, writable):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} {info.name!r}: expected a numpy array, got {type(arr).__name__}")
    want = np.dtype(_numpy_dtype(info))
    ok = arr.dtype == want or (info.dtype == "fp16" and arr.dtype == np.float32)
    if not ok:
        extra = " (or float32)" if info.dtype == "fp16" else ""
        raise ValueError(f"{what} {info.name!r}: expected dtype {want}{extra}, got {arr.dtype}")
    if tuple(arr.shape) != info.shape:
        raise ValueError(f"{what} {info.name!r}: expected shape {info.shape}, got {tuple(arr.shape)}")
    if writable and not (arr.flags.c_contiguous and arr.flags.writeable):
        raise ValueError(f"{what} {info.name!r}: must be a writable C-contiguous array")


def compile(mil_text, weights=None, backend=None, name="", strict=None):
    """Compile MIL text into a Kernel.

    weights: {"@model_path/weights/x.bin": bytes} for BLOBFILE constants.
    backend: None or "auto" (ANE when available, else ref), "ref", "ane", or a Backend object.
    With "auto" on the ANE, a program the ANE cannot run runs on ref: the kernel's
    ``placement_note`` says why (strict=True or ANETRAIN_STRICT=1 makes that an error).
    """
    if backend is None:
        backend = "auto"
    if backend == "auto" and strict is not None:
        backend = new_backend("auto", strict=strict)
    if isinstance(backend, str):
        backend = get_backend(backend)
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be None, a name or a Backend, got {type(backend).__name__}")
    return _compile_on(backend, mil_text, weights, name)


def _compile_on(backend, mil_text, weights, name):
    blobs = {str(k): bytes(v) for k, v in (weights or {}).items()}
    native = backend._native.compile(mil_text, blobs, name)
    return Kernel(native, backend)


def model_kernels(config, pipeline="dynamic", layer_weights=None, precision="fp16", dialect=None, probs_tap=False):
    """The model's per-layer kernels as [(name, mil_text, weights, input names, output names)].

    config: a ModelConfig, dict or object with llama2.c's fields. The static pipeline bakes
    ``layer_weights`` ({"wq": [q_dim, dim], "wk", "wv", "wo", "w1", "w2", "w3"} as float32, and with
    QK-norm "q_norm", "k_norm" [head_dim]; config.layer_param_shapes lists them).
    probs_tap: attention_forward also returns the attention probabilities and
    attention_backward takes them (after v) instead of recomputing them, as the trainer does
    on the ref backend.
    """
    dialect = dialect or ane.dialect_string()  # this Mac's MIL dialect (1.3/ios18 off macOS)
    shape = kernel_shape(config)
    if pipeline == "static" and layer_weights is None:
        raise ValueError("the static pipeline bakes weights: pass layer_weights")
    out = []
    for name in _native.model_kernel_names():
        text, blobs, ins, outs, _, _ = _native.model_kernel(name, shape, pipeline, precision, dialect,
                                                      layer_weights if pipeline == "static" else None, probs_tap)
        out.append((name, text, blobs, list(ins), list(outs)))
    return out
