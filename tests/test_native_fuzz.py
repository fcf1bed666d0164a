"""Fuzz of every anetrain._native binding that takes NumPy arrays (native/bindings/arrays.h).

Each binding is listed in BINDINGS with a valid call; the driver (this file run as a script, in
a subprocess so that a crash fails the test with its seed and case instead of killing pytest)
calls each with arrays of wrong dtypes, shapes (0-sized, one element, wrong rank, huge claimed
sizes through zero strides), non-contiguous views, read-only outputs, lists instead of arrays,
and wrong counts beside the arrays. Every case must succeed or raise ValueError, TypeError or
one of anetrain's own errors; a signal or a MemoryError is a failure.
"""
import os
import re
import subprocess
import sys

import numpy as np

SEED = 20240611
CASES = 600

V, D, S, C, H = 8, 4, 3, 4, 6  # vocab, dim, positions, channels, hidden
TINY = dict(dim=48, hidden_dim=96, n_heads=6, n_kv_heads=2, seq_len=12)


def A(dtype, *shape, out=False):
    """An array argument: its valid dtype and shape; out: native code writes it."""
    return ("array", np.dtype(dtype), tuple(shape), out)


def N(valid, *bad):
    """A count beside the arrays: its valid value and values to try instead."""
    return ("count", valid, bad)


def W():
    d, h, kv = TINY["dim"], TINY["hidden_dim"], TINY["dim"] // TINY["n_heads"] * TINY["n_kv_heads"]
    shapes = dict(wq=(d, d), wk=(kv, d), wv=(kv, d), wo=(d, d), w1=(h, d), w2=(d, h), w3=(h, d))
    return {k: A(np.float32, *s) for k, s in shapes.items()}


# the decoder's weights for fixtures()'s config (dim 16, 1 layer, 2 heads, hidden 64, vocab V)
DW = {"tok_embeddings": A(np.float32, V, 16), "norm": A(np.float32, 16),
      **{f"layers.0.{k}": A(np.float32, 16) for k in ("attention_norm", "ffn_norm")},
      **{f"layers.0.attention.{k}": A(np.float32, 16, 16) for k in ("wq", "wk", "wv", "wo")},
      **{f"layers.0.feed_forward.{k}": A(np.float32, 64, 16) for k in ("w1", "w3")},
      "layers.0.feed_forward.w2": A(np.float32, 16, 64)}

EVAL_PROGRAM = """program(1.3)
{
    func main<ios18>(tensor<fp32, [2, 3]> x) {
        tensor<fp32, [2, 3]> y = add(x = x, y = x)[name = string("y")];
    } -> (y);
}
"""

# name -> (how to reach the callable from the module and the fixtures, arguments). Arguments
# are A(...) arrays, N(...) counts, lists/tuples/dicts of them, or plain values.
BINDINGS = {
    "fp16_encode": ("fp16_encode", [A(np.float32, 5), A(np.float16, 5, out=True)]),
    "fp16_decode": ("fp16_decode", [A(np.float16, 5), A(np.float32, 5, out=True)]),
    "fp16_round": ("fp16_round", [A(np.float32, 5), A(np.float32, 5, out=True)]),
    "sgemm": ("sgemm", [A(np.float32, 3, 4), A(np.float32, 4, 2)]),
    "sgemm_batch": ("sgemm_batch", [A(np.float32, 2, 3, 4), A(np.float32, 2, 4, 2)]),
    "blob_write": ("blob_write", [[("fp16", A(np.float16, 5)), ("fp32", A(np.float32, 3))]]),
    "model_kernel": ("model_kernel", ["ffn_forward", TINY, "static", "fp16", "1.3/ios18", W()]),
    "Kernel.eval": ("kernel.eval", [[A(np.float32, 2, 3)], [A(np.float32, 2, 3, out=True)]]),
    "ane_write_tensor": ("ane_write_tensor", ["fp16", [1, 2, 1, 3], A(np.float32, 1, 2, 1, 3),
                                              A(np.uint8, 64, out=True), N(8, 52, 60, 64, 2**62, 2**64 - 1)]),
    "ane_write_columns": ("ane_write_columns", ["fp16", [1, 2, 1, 3], A(np.float32, 1, 2, 1, 3),
                                                A(np.uint8, 64, out=True), [(0, 2)]]),
    "ane_read_tensor": ("ane_read_tensor", ["fp16", [1, 2, 1, 3], A(np.uint8, 64),
                                            A(np.float32, 1, 2, 1, 3, out=True), N(8, 60, 2**64 - 1)]),
    "cpu_embedding_fwd": ("cpu_embedding_fwd", [A(np.float32, V, D), A(np.int32, S)]),
    "cpu_embedding_bwd": ("cpu_embedding_bwd", [A(np.float32, D, S), A(np.int32, S), A(np.float32, V, D, out=True)]),
    "cpu_rmsnorm_fwd": ("cpu_rmsnorm_fwd", [A(np.float32, C, S), A(np.float32, C)]),
    "cpu_rmsnorm_bwd": ("cpu_rmsnorm_bwd", [A(np.float32, C, S), A(np.float32, C, S), A(np.float32, C),
                                            A(np.float32, S), A(np.float32, C, S, out=True),
                                            A(np.float32, C, out=True)]),
    "cpu_classifier_fwd": ("cpu_classifier_fwd", [A(np.float32, V, D), A(np.float32, D, S)]),
    "cpu_classifier_loss": ("cpu_classifier_loss", [A(np.float32, V, D), A(np.float32, D, S), A(np.int32, S), 1.0,
                                                    A(np.float32, V, D, out=True)]),
    "cpu_adamw_step": ("cpu_adamw_step", [A(np.float32, 3, 2, out=True), A(np.float32, 3, 2),
                                          A(np.float32, 3, 2, out=True), A(np.float32, 3, 2, out=True), 1, 1e-3]),
    "ModelState.set": ("state.set", ["norm", A(np.float32, 16)]),
    "Trainer.accumulate": ("trainer.accumulate", [A(np.int32, 1, 9)]),
    "Trainer.forward": ("trainer.forward", [A(np.int32, 1, 8)]),
    "Decoder.__init__": ("new_decoder.__call__", [DW]),
    "Decoder.forward": ("decoder.forward", [A(np.int32, S)]),
}

DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, object]


def array_taking_bindings(native):
    """Every function and method of the module whose signature takes a NumPy array (or, as
    model_kernel's weights and blob_write's items, holds arrays in an argument)."""
    found = set()

    def scan(qualname, obj):
        for line in (getattr(obj, "__doc__", None) or "").splitlines():
            m = re.match(r"\s*\w+\((.*)\)\s*->", line)
            if m and "numpy.ndarray" in m.group(1):
                found.add(qualname)

    for name in dir(native):
        obj = getattr(native, name)
        if isinstance(obj, type):
            for attr in dir(obj):
                if not attr.startswith("__") or attr == "__init__":
                    scan(f"{name}.{attr}", getattr(obj, attr))
        elif callable(obj):
            scan(name, obj)
    return found


# ------------------------------------------------------------------------------ the driver

def make_valid(rng, dtype, shape):
    if dtype == np.int32:
        return rng.integers(0, V, size=shape).astype(np.int32)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    return rng.standard_normal(shape).astype(dtype) * 0.1


def mutate(rng, dtype, shape, out):
    """An array argument: valid, or wrong in one way; returns (value, description)."""
    kind = rng.choice(["valid", "valid", "dtype", "shape", "empty", "one", "rank", "huge", "step", "transpose",
                       "reversed", "readonly", "list", "scalar"])
    a = make_valid(rng, dtype, shape)
    if kind == "dtype":
        dt = DTYPES[rng.integers(len(DTYPES))]
        if dt is object:
            b = np.empty(shape, dtype=object)
            b[...] = 1
            return b, "dtype object"
        return a.astype(dt), f"dtype {np.dtype(dt)}"
    if kind == "shape":
        s = list(shape)
        i = rng.integers(len(s))
        s[i] = max(0, s[i] + int(rng.choice([-1, 1, 5])))
        return make_valid(rng, dtype, tuple(s)), f"shape {tuple(s)}"
    if kind == "empty":
        s = list(shape)
        s[rng.integers(len(s))] = 0
        return np.zeros(s, dtype), f"shape {tuple(s)}"
    if kind == "one":
        return np.ones((1,) * len(shape), dtype), "one element"
    if kind == "rank":
        s = shape + (1,) if rng.random() < 0.5 else shape[:-1] or (1,)
        return np.resize(a, s), f"rank {len(s)}"
    if kind == "huge":
        at = rng.integers(len(shape))
        big = [2**40 if i == at else d for i, d in enumerate(shape)]
        return (np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=big, strides=(0,) * len(big)),
                f"as_strided {tuple(big)} zero strides")
    if kind == "step":
        wide = make_valid(rng, dtype, shape[:-1] + (shape[-1] * 2,))
        return wide[..., ::2], "every other column"
    if kind == "transpose" and len(shape) >= 2:
        return make_valid(rng, dtype, shape[::-1]).T, "transposed"
    if kind == "reversed":
        return a[::-1], "negative stride"
    if kind == "readonly":
        a.setflags(write=False)
        return a, "read-only"
    if kind == "list":
        return a.tolist(), "list"
    if kind == "scalar":
        return dtype.type(1), "scalar"
    return a, "valid"


def build(rng, spec, notes):
    if isinstance(spec, tuple) and spec and spec[0] == "array":
        _, dtype, shape, out = spec
        value, what = mutate(rng, dtype, shape, out)
        notes.append(what)
        return value
    if isinstance(spec, tuple) and spec and spec[0] == "count":
        _, valid, bad = spec
        value = valid if rng.random() < 0.6 else int(rng.choice(bad))
        notes.append(f"count {value}")
        return value
    if isinstance(spec, list):
        return [build(rng, s, notes) for s in spec]
    if isinstance(spec, tuple):
        return tuple(build(rng, s, notes) for s in spec)
    if isinstance(spec, dict) and spec and all(isinstance(v, tuple) and v[0] == "array" for v in spec.values()):
        return {k: build(rng, v, notes) for k, v in spec.items()}
    return spec


def fixtures(native):
    import anetrain.kernels as K

    backend = native.make_ref_backend()
    config = native.ModelConfig(dim=16, n_layers=1, n_heads=2, vocab_size=V, seq_len=8)
    trainer = native.Trainer(config, native.make_ref_backend(), "dynamic", "fp32")
    rng = np.random.default_rng(0)
    weights = {k: make_valid(rng, dtype, shape) for k, (_, dtype, shape, _) in DW.items()}
    return dict(kernel=backend.compile(EVAL_PROGRAM), state=native.ModelState(config), trainer=trainer, K=K,
                decoder=native.Decoder(config, weights, 1000), new_decoder=lambda w: native.Decoder(config, w))


def drive(seed, cases):
    from anetrain import _native as native
    import anetrain

    own = tuple(e for e in (getattr(anetrain, n, None) for n in dir(anetrain))
                if isinstance(e, type) and issubclass(e, Exception))
    allowed = (ValueError, TypeError, IndexError, KeyError) + own
    fx = fixtures(native)
    rng = np.random.default_rng(seed)
    names = sorted(BINDINGS)
    for case in range(cases):
        name = names[case % len(names)]
        path, spec = BINDINGS[name]
        target = fx[path.split(".")[0]] if "." in path else native
        fn = getattr(target, path.split(".")[-1])
        notes = []
        args = build(rng, spec, notes)
        print(f"seed {seed} case {case}: {name} ({'; '.join(notes)})", flush=True)
        try:
            fn(*args)
        except MemoryError:
            raise
        except allowed:
            pass


def test_every_array_taking_binding_is_fuzzed():
    from anetrain import _native

    listed = {name for name in BINDINGS}
    missing = array_taking_bindings(_native) - listed
    assert not missing, f"add these bindings to BINDINGS in {__file__}: {sorted(missing)}"


def test_bindings_refuse_bad_arrays_without_crashing():
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), str(SEED), str(CASES)], capture_output=True,
                         text=True, cwd=os.path.dirname(tests), timeout=300)
    last = (out.stdout.strip().splitlines() or ["(no case started)"])[-1]
    assert out.returncode == 0, f"exit {out.returncode} at {last}\n{out.stderr[-3000:]}"


if __name__ == "__main__":
    drive(int(sys.argv[1]), int(sys.argv[2]))
