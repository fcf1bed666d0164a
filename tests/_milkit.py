"""Small helpers for writing MIL programs and blob files by hand in tests (spec layout, not
the project's writer, so the reader is checked against an independent implementation)."""
import struct

import numpy as np

import anetrain.kernels as K

BLOB_CODES = {np.dtype(np.float16): 1, np.dtype(np.float32): 2, np.dtype(np.uint8): 3, np.dtype(np.int8): 4}
NP2MIL = {np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32", np.dtype(np.int32): "int32",
          np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.bool_): "bool"}


def blob_file(*arrays):
    """MIL blob storage v2: 64-byte header, then per blob a 64-byte record and its data, all
    64-aligned. Returns (bytes, [metadata offsets])."""
    out = bytearray(struct.pack("<II", len(arrays), 2) + bytes(56))
    offsets = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        data = a.tobytes()
        meta = len(out)
        offsets.append(meta)
        out += struct.pack("<IIQQ", 0xDEADBEEF, BLOB_CODES[a.dtype], len(data), meta + 64) + bytes(40)
        out += data
        out += bytes((-len(out)) % 64)
    return bytes(out), offsets


def ttype(dtype, shape):
    return f"tensor<{dtype}, [{', '.join(str(int(d)) for d in shape)}]>"


def lit(value, dtype=None):
    """Inline literal for a numpy value: scalars as fp16(...), arrays as tensor<..>([...])."""
    a = np.asarray(value)
    d = dtype or NP2MIL[a.dtype]
    if d == "bool":
        fmt = lambda v: "true" if v else "false"  # noqa: E731
    elif d in ("fp16", "fp32"):
        fmt = lambda v: float(v).hex()  # noqa: E731
    else:
        fmt = lambda v: str(int(v))  # noqa: E731
    if a.ndim == 0:
        return f"{d}({fmt(a.item())})"
    return f"{ttype(d, a.shape)}([{', '.join(fmt(v) for v in a.reshape(-1))}])"


def program(inputs, body, outputs, version="1.3", opset="ios18"):
    """inputs: [(name, dtype, shape)]; body: statement lines; outputs: names."""
    params = ", ".join(f"{ttype(d, s)} {n}" for n, d, s in inputs)
    lines = [f"program({version})", "{", f"    func main<{opset}>({params}) {{"]
    lines += ["        " + b for b in body]
    lines += [f"    }} -> ({', '.join(outputs)});", "}"]
    return "\n".join(lines) + "\n"


def const(name, value, dtype=None):
    a = np.asarray(value)
    d = dtype or NP2MIL[a.dtype]
    t = d if a.ndim == 0 else ttype(d, a.shape)
    return f'{t} {name} = const()[name = string("{name}"), val = {lit(a, d)}];'


def f16(x):
    """NumPy reference of an fp16 op output: computed in fp32, rounded to fp16."""
    return np.asarray(x, np.float32).astype(np.float16)


def run(text, *arrays, weights=None, precision="fp16"):
    backend = K.new_backend("ref", precision=precision)
    return K.compile(text, weights=weights, backend=backend)(*arrays)
