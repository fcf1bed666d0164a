"""MIL programs from Python: weight blobs and a text builder.

``pack_weights`` writes the weight file a program's BLOBFILE constants point into; ``Builder``
writes program text in the dialect the ANE compiler accepts. Both are what the native kernel
generators use, exposed for notebooks and tests.

    blob, offsets = pack_weights([w.astype(np.float16)])
    b = Builder()
    x = b.input("x", "fp16", [1, 64, 1, 32])
    W = b.weight("W", "fp16", [128, 64, 1, 1], "@model_path/weights/w.bin", offsets[0])
    y = b.op("y", "fp16", [1, 128, 1, 32], "conv", x=x, weight=W, strides=ints([1, 1]),
             pad_type=string("valid"), pad=ints([0, 0, 0, 0]), dilations=ints([1, 1]), groups=int32(1))
    b.output(y)
    kernel = anetrain.kernels.compile(b.text(), {"@model_path/weights/w.bin": blob})
"""
import numpy as np

from . import _native

_BLOB_DTYPES = {
    np.dtype(np.float16): "fp16",
    np.dtype(np.float32): "fp32",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int16): "int16",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.int32): "int32",
}
_CAST = {"fp16": np.float16, "fp32": np.float32, "int8": np.int8, "uint8": np.uint8}


def pack_weights(arrays, dtype=None):
    """Pack arrays into one MIL blob file (storage v2).

    Returns ``(blob_bytes, offsets)``; ``offsets[i]`` is what the program's
    ``BLOBFILE(..., offset = uint64(...))`` names for ``arrays[i]``. Each array is stored
    row-major in its own dtype (float16, float32, int8, uint8, int16, uint16, int32), or
    converted to ``dtype`` ("fp16", "fp32", "int8", "uint8") first.
    """
    items = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if dtype is not None:
            if dtype not in _CAST:
                raise ValueError(f"pack_weights: dtype must be one of {sorted(_CAST)}, got {dtype!r}")
            a = a.astype(_CAST[dtype])
        code = _BLOB_DTYPES.get(a.dtype)
        if code is None:
            raise TypeError(f"pack_weights: array {i} has dtype {a.dtype}; convert it to float16 or float32 "
                            f"(or pass dtype='fp16')")
        items.append((code, np.ascontiguousarray(a).reshape(-1)))
    data, offsets = _native.blob_write(items)
    return data, list(offsets)


def blob_records(data):
    """The records of a blob file: dicts with offset, dtype, size and data_offset."""
    return list(_native.blob_records(bytes(data)))


def unpack_weights(data):
    """The arrays of a blob file as 1-D NumPy arrays (reshape them to the declared shapes)."""
    names = {v: k for k, v in _BLOB_DTYPES.items()}
    out = []
    for r in blob_records(data):
        dt = names[r["dtype"]]
        out.append(np.frombuffer(data, dtype=dt, count=r["size"] // dt.itemsize, offset=r["data_offset"]).copy())
    return out


# Operand helpers: non-variable operands become named const statements in the program.
def ints(values):
    return ("ints", [int(v) for v in values])


def int32(v):
    return ("int32", int(v))


def fp16(v):
    return ("fp16", float(v))


def fp32(v):
    return ("fp32", float(v))


def boolean(v):
    return ("bool", bool(v))


def string(v):
    return ("string", str(v))


def _operand(v):
    if isinstance(v, str):
        return ("var", v)
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
        return v
    raise TypeError(f"MIL operand {v!r}: pass a variable name or ints()/int32()/fp16()/fp32()/boolean()/string()")


class Builder:
    """Writes MIL program text. Every op states its output dtype and shape; backends verify them."""

    def __init__(self, dialect="1.3/ios18", function="main"):
        self._b = _native.MilBuilder(dialect, function)

    @property
    def dialect(self):
        return self._b.dialect

    def input(self, name, dtype, shape):
        return self._b.input(name, dtype, list(shape))

    def weight(self, name, dtype, shape, path, offset=64):
        return self._b.weight(name, dtype, list(shape), path, int(offset))

    def constant(self, name, dtype, shape, values):
        values = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
        return self._b.constant(name, dtype, list(shape), values, True)

    def op(self, out, dtype, shape, op_type, /, values=None, values_key="values", **args):
        """One statement. ``shape=None`` declares a scalar. ``values`` (a list of variable names)
        is passed as a tuple argument, as concat takes it. The first four parameters are
        positional only, so an op argument may be called ``shape`` (reshape's)."""
        pairs = [(k, _operand(v)) for k, v in args.items()]
        tensor = shape is not None
        return self._b.op(out, dtype, list(shape or []), tensor, op_type, pairs,
                          values_key if values is not None else "", list(values or []))

    def output(self, name):
        self._b.output(name)

    def text(self):
        return self._b.text()
