"""Tile-by-tile execution of element-wise chains in the ref backend (native/backend/ref/fuse.cpp).

Fusion only reorders work, so every program must give bitwise the same outputs with it
(make_ref_backend(fuse=True), the default) and without it (fuse=False); NumPy checks that both
are also right. The profile (ANETRAIN_REF_PROFILE=1) shows which ops ran as one fused step, which
is how the tests check that fusion happens at all, and stops where it must.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from _milkit import const, lit, program, ttype
from anetrain import _native
import anetrain.kernels as K

BACKENDS = {}


@pytest.fixture(autouse=True)
def fusion_not_disabled(monkeypatch):
    """These tests are about fusion: a caller's ANETRAIN_REF_FUSE=0 would make them vacuous."""
    monkeypatch.delenv("ANETRAIN_REF_FUSE", raising=False)


def backend(fuse, precision):
    key = (fuse, precision)
    if key not in BACKENDS:
        BACKENDS[key] = K.Backend(_native.make_ref_backend(fp16_rounding=precision == "fp16", fuse=fuse))
    return BACKENDS[key]


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 1: np.uint8}[a.itemsize])


def run_both(text, arrays, precision="fp16", fp32_outputs=False, weights=None):
    """Outputs with and without fusion (asserted bitwise equal), as a list. fp32_outputs: pass
    float32 arrays for fp16 outputs (the kernel then writes rounded floats, not halves)."""
    results = []
    for fuse in (False, True):
        k = K.compile(text, weights=weights, backend=backend(fuse, precision))
        outs = []
        for o in k.outputs:
            dt = np.float32 if fp32_outputs and o.dtype == "fp16" else K._numpy_dtype(o)
            outs.append(np.full(o.shape, np.nan if np.issubdtype(dt, np.floating) else 0, dt))
        k.eval_into(list(arrays), outs)
        results.append(outs)
    for name, a, b in zip(k.outputs, *results):
        assert np.array_equal(bits(a), bits(b)), f"output {name.name} differs with fusion"
    return results[1]


def profile_lines(code, fuse_env=None):
    """Stderr of a subprocess that compiles and runs a kernel with ANETRAIN_REF_PROFILE=1."""
    env = dict(os.environ, ANETRAIN_REF_PROFILE="1")
    if fuse_env is not None:
        env["ANETRAIN_REF_FUSE"] = fuse_env
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(tests))
    assert out.returncode == 0, out.stderr
    return out.stderr


# ----------------------------------------------------------------------------- random chains

class Chain:
    """A random program of element-wise ops, softmax and last-axis reduce_sum over one shape,
    with its NumPy reference (float64 per op, rounded to the program's dtype like the backend)."""

    def __init__(self, rng, shape, dtype, n_ops):
        self.rng, self.shape, self.dtype = rng, tuple(shape), dtype
        self.np = np.float16 if dtype == "fp16" else np.float32
        self.inputs, self.arrays, self.body = [], [], []
        self.values = {}  # name -> (reference array, bound on |value|)
        self.full = []    # names of full-shape values
        self.rows = []    # names of [..., 1] values (row broadcast operands)
        rows_shape = self.shape[:-1] + (1,)
        chan_shape = (1,) * (len(self.shape) - 3) + (self.shape[-3], 1, 1)
        for name, shp in (("x0", self.shape), ("x1", self.shape), ("r0", rows_shape), ("c0", chan_shape)):
            a = rng.uniform(-1, 1, shp).astype(self.np)
            self.inputs.append((name, dtype, shp))
            self.arrays.append(a)
            self.values[name] = (a.astype(np.float64), 1.0)
            (self.full if shp == self.shape else self.rows if shp == rows_shape else []).append(name)
        self.chan = "c0"
        for i in range(n_ops):
            self.step(f"v{i}")

    def emit(self, name, shape, text, ref, bound):
        self.body.append(f"{ttype(self.dtype, shape)} {name} = {text};")
        self.values[name] = (ref.astype(self.np).astype(np.float64), bound)
        (self.full if tuple(shape) == self.shape else self.rows).append(name)

    def pick(self, pool):
        # recent values most often, so the chain mostly reads what it just produced
        i = len(pool) - 1 - min(int(self.rng.geometric(0.5)) - 1, len(pool) - 1)
        return pool[i]

    def step(self, name):
        rng, full = self.rng, self.full
        a = self.pick(full)
        va, ba = self.values[a]
        kind = rng.choice(["binary", "binary", "binary", "unary", "softmax", "reduce"])
        if kind == "reduce" and ba * self.shape[-1] > 2000:
            kind = "unary"  # keep values well inside the fp16 range
        if kind == "unary":
            op = rng.choice(["sigmoid", "tanh", "exp", "relu", "silu"])
            if op == "exp" and ba > 4:
                op = "tanh"
            f = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "exp": np.exp,
                 "relu": lambda v: np.maximum(v, 0), "silu": lambda v: v / (1 + np.exp(-v))}[op]
            bound = {"sigmoid": 1.0, "tanh": 1.0, "exp": np.exp(min(ba, 4)), "relu": ba, "silu": ba}[op]
            self.emit(name, self.shape, f"{op}(x = {a})", f(va), bound)
        elif kind == "softmax":
            e = np.exp(va - va.max(axis=-1, keepdims=True))
            self.emit(name, self.shape, f"softmax(x = {a}, axis = {lit(np.int32(-1))})", e / e.sum(axis=-1, keepdims=True), 1.0)
        elif kind == "reduce":
            # the attention backward's pattern: rows = sum(a, -1); a - rows (a row broadcast)
            rows = name + "_rows"
            s = va.sum(axis=-1, keepdims=True)
            self.emit(rows, self.shape[:-1] + (1,),
                      f"reduce_sum(x = {a}, axes = {lit(np.array([-1], np.int32))}, keep_dims = {lit(np.bool_(True))})",
                      s, ba * self.shape[-1])
            s = self.values[rows][0]
            b = self.pick(full)
            vb, bb = self.values[b]
            self.emit(name, self.shape, f"sub(x = {b}, y = {rows})", vb - s, bb + ba * self.shape[-1])
        else:
            where = rng.choice(["same", "same", "scalar", "row", "channel"])
            if where == "same":
                b = self.pick(full)
                vb, bb = self.values[b]
            elif where == "scalar":
                s = self.np(rng.uniform(0.5, 1.5) * rng.choice([-1, 1]))
                b, vb, bb = lit(s, self.dtype), np.float64(s), abs(float(s))
            elif where == "row":
                b = self.pick(self.rows)
                vb, bb = self.values[b]
            else:
                b = self.chan
                vb, bb = self.values[b]
            ops = ["add", "sub", "maximum", "minimum"] + (["mul"] if ba * bb < 50 else [])
            op = rng.choice(ops)
            f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum}[op]
            bound = {"add": ba + bb, "sub": ba + bb, "mul": ba * bb, "maximum": max(ba, bb), "minimum": max(ba, bb)}[op]
            x, y, vx, vy = (a, b, va, vb) if rng.random() < 0.7 or where == "scalar" else (b, a, vb, va)
            if where != "same" and x == b:
                x, y, vx, vy = a, b, va, vb  # keep the output shape: the full operand first
            self.emit(name, self.shape, f"{op}(x = {x}, y = {y})", f(vx, vy), bound)

    def program(self, outputs):
        return program(self.inputs, self.body, outputs)


SHAPES = [
    (2, 3, 5, 7),        # tiny: one tile
    (1, 4, 33, 257),     # odd rows, 33924 elements: tiles do not divide it
    (2, 3, 67, 301),     # 121014 elements: several tiles on several threads
]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_random_chains_fused_equals_unfused_and_numpy(seed, precision):
    rng = np.random.default_rng(seed)
    shape = SHAPES[seed % len(SHAPES)]
    c = Chain(rng, shape, precision, n_ops=int(rng.integers(4, 14)))
    made = [n for n in c.full if n.startswith("v")]
    # the last value, and a few intermediates that later ops also read
    outs = sorted(set([made[-1]] + list(rng.choice(made, size=min(3, len(made)), replace=False))), key=made.index)
    got = run_both(c.program(outs), c.arrays, precision, fp32_outputs=seed % 2 == 1)
    for name, g in zip(outs, got):
        want, bound = c.values[name]
        if precision == "fp32":
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * bound, err_msg=name)
        else:
            # per-op fp16 rounding can flip where libm/exp/sum order differ by an fp32 ulp,
            # and a flip propagates: a few fp16 ulps of the value's magnitude
            np.testing.assert_allclose(np.float32(g), want, rtol=8e-3, atol=8e-3 * bound, err_msg=name)


# ----------------------------------------------------------------------------- structure

def attention_like(S=48, H=3):
    """scores -> mul(scale) -> add(mask) -> softmax, then the softmax backward; returns text."""
    t, r = ttype("fp16", (1, H, S, S)), ttype("fp16", (1, H, S, 1))
    mask = np.where(np.tril(np.ones((S, S), bool)), 0.0, -65504.0).astype(np.float16)[None, None]
    body = [
        const("mask", mask),
        f"{t} s1 = mul(x = sc, y = {lit(np.float16(0.125))});",
        f"{t} s2 = add(x = s1, y = mask);",
        f"{t} p = softmax(x = s2, axis = {lit(np.int32(-1))});",
        f"{t} pdp = mul(x = p, y = dp);",
        f"{r} rows = reduce_sum(x = pdp, axes = {lit(np.array([-1], np.int32))}, keep_dims = {lit(np.bool_(True))});",
        f"{t} cen = sub(x = dp, y = rows);",
        f"{t} d0 = mul(x = p, y = cen);",
        f"{t} ds = mul(x = d0, y = {lit(np.float16(0.125))});",
    ]
    return program([("sc", "fp16", (1, H, S, S)), ("dp", "fp16", (1, H, S, S))], body, ["p", "ds"]), mask


def test_attention_chain_fuses_into_one_step_and_matches_numpy(rng):
    S, H = 48, 3
    text, mask = attention_like(S, H)
    sc = rng.standard_normal((1, H, S, S)).astype(np.float16)
    dp = rng.standard_normal((1, H, S, S)).astype(np.float16)
    p, ds = run_both(text, [sc, dp])
    r = lambda v: np.float64(np.float16(v))  # noqa: E731
    s2 = r(r(sc * np.float64(0.125)) + mask)
    e = np.exp(s2 - s2.max(-1, keepdims=True))
    pw = r(e / e.sum(-1, keepdims=True))
    np.testing.assert_allclose(np.float32(p), pw, rtol=2e-3, atol=1e-6)
    rows = r(r(pw * dp).sum(-1, keepdims=True))
    dsw = r(r(pw * r(dp - rows)) * 0.125)
    np.testing.assert_allclose(np.float32(ds), dsw, rtol=1e-2, atol=2e-3)

    code = ("import numpy as np, anetrain.kernels as K\n"
            f"k = K.compile({text!r}, backend='ref', name='att')\n"
            f"k(np.zeros((1, {H}, {S}, {S}), np.float16), np.zeros((1, {H}, {S}, {S}), np.float16))\n"
            "del k\n")
    err = profile_lines(code)
    # mul+add+softmax and the whole backward: one chain, since all read what they produce pointwise
    # (or, for rows, as the row broadcast of a last-axis reduction)
    assert "lines 5-12 mul+add+softmax+mul+reduce_sum+sub+mul+mul -> ds" in err, err
    err = profile_lines(code, fuse_env="0")
    assert "lines " not in err and "line 7 softmax -> p" in err, err


def test_transposed_read_of_a_fused_output_starts_a_new_chain(rng):
    """add reads a through a transpose: same element count, different element order. It must
    not run in a's tiles (the elements it needs may not be computed yet)."""
    shape, tshape = (2, 3, 40, 24), (2, 3, 24, 40)
    body = [
        f"{ttype('fp32', shape)} a = mul(x = x, y = {lit(np.float32(3.0))});",
        f"{ttype('fp32', shape)} b = sigmoid(x = a);",
        f"{ttype('fp32', tshape)} t = transpose(x = a, perm = {lit(np.array([0, 1, 3, 2], np.int32))});",
        f"{ttype('fp32', tshape)} c = add(x = t, y = y);",
        f"{ttype('fp32', tshape)} d = mul(x = c, y = c);",
    ]
    text = program([("x", "fp32", shape), ("y", "fp32", tshape)], body, ["b", "d"])
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(tshape).astype(np.float32)
    b, d = run_both(text, [x, y], precision="fp32")
    a = x * np.float32(3)
    np.testing.assert_allclose(b, 1 / (1 + np.exp(-a)), rtol=1e-6)
    c = np.swapaxes(a, 2, 3) + y
    np.testing.assert_allclose(d, c * c, rtol=1e-6)
    code = ("import numpy as np, anetrain.kernels as K\n"
            f"k = K.compile({text!r}, backend=K.new_backend('ref', precision='fp32'), name='t')\n"
            f"k(np.ones({shape}, np.float32), np.ones({tshape}, np.float32))\n"
            "del k\n")
    err = profile_lines(code)
    assert "lines 4-5 mul+sigmoid -> b" in err and "lines 7-8 add+mul -> d" in err, err


def test_matmul_and_slices_between_element_wise_ops(rng):
    """A chain cut by a matmul that reads an intermediate of the chain before it (so that one
    must reach its buffer, not just a tile's scratch), a strided slice of a chain's output read
    later, a reshape (a pointwise view) inside a chain, and an intermediate that is returned and
    read again."""
    body = [
        f"{ttype('fp16', (4, 16, 24))} a = mul(x = x, y = x);",
        f"{ttype('fp16', (4, 16, 24))} b = add(x = a, y = {lit(np.float16(-0.5))});",
        f"{ttype('fp16', (4, 24, 16))} bt = transpose(x = b, perm = {lit(np.array([0, 2, 1], np.int32))});",
        f"{ttype('fp16', (4, 16, 16))} m = matmul(x = a, y = bt);",
        f"{ttype('fp16', (4, 16, 16))} e = tanh(x = m);",
        f"{ttype('fp16', (4, 8, 16))} half = slice_by_size(x = b, begin = {lit(np.array([0, 0, 0], np.int32))}, "
        f"size = {lit(np.array([4, 8, 16], np.int32))});",
        f"{ttype('fp16', (4, 1, 8, 16))} h4 = reshape(x = half, shape = {lit(np.array([4, 1, 8, 16], np.int32))});",
        f"{ttype('fp16', (4, 2, 8, 16))} e4 = reshape(x = e, shape = {lit(np.array([4, 2, 8, 16], np.int32))});",
        f"{ttype('fp16', (4, 2, 8, 16))} f = mul(x = e4, y = {lit(np.float16(2.0))});",
        f"{ttype('fp16', (4, 2, 8, 16))} g = add(x = f, y = h4);",
    ]
    text = program([("x", "fp16", (4, 16, 24))], body, ["b", "g"])
    x = rng.standard_normal((4, 16, 24)).astype(np.float16)
    b, g = run_both(text, [x])
    r = lambda v: np.float16(v).astype(np.float64)  # noqa: E731
    aw = r(np.float64(x) ** 2)
    bw = r(aw - 0.5)
    np.testing.assert_array_equal(b, np.float16(bw))
    e = r(np.tanh(r(aw @ np.swapaxes(bw, 1, 2))))
    gw = r(r(e.reshape(4, 2, 8, 16) * 2) + bw[:, :8, :16][:, None])
    np.testing.assert_allclose(np.float32(g), gw, rtol=4e-3, atol=4e-3)


def test_softmax_over_a_middle_axis_and_int32_chains(rng):
    shape = (3, 5, 7, 9)
    body = [
        f"{ttype('fp32', shape)} a = add(x = x, y = x);",
        f"{ttype('fp32', shape)} s = softmax(x = a, axis = {lit(np.int32(1))});",
        f"{ttype('fp32', shape)} t = mul(x = s, y = x);",
        f"{ttype('int32', shape)} i = add(x = n, y = n);",
        f"{ttype('int32', shape)} j = mul(x = i, y = {lit(np.int32(-3))});",
        f"{ttype('int32', shape)} k = maximum(x = j, y = n);",
    ]
    text = program([("x", "fp32", shape), ("n", "int32", shape)], body, ["t", "k"])
    x = rng.standard_normal(shape).astype(np.float32)
    n = rng.integers(-100, 100, shape).astype(np.int32)
    t, k = run_both(text, [x, n], precision="fp32")
    a = np.float64(x + x)
    e = np.exp(a - a.max(1, keepdims=True))
    np.testing.assert_allclose(t, e / e.sum(1, keepdims=True) * x, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(k, np.maximum((n + n) * -3, n))


def test_fuse_env_switch_is_read_at_compile():
    text, _ = attention_like(16, 2)
    code = ("import numpy as np, os, anetrain.kernels as K\n"
            f"a = K.compile({text!r}, backend='ref', name='on')\n"
            "os.environ['ANETRAIN_REF_FUSE'] = '0'\n"
            f"b = K.compile({text!r}, backend='ref', name='off')\n"
            "z = np.zeros((1, 2, 16, 16), np.float16)\n"
            "a(z, z); b(z, z)\n"
            "del a, b\n")
    on, off = profile_lines(code).split("ref profile of 'off'")  # a goes first, then b
    assert "ref profile of 'on'" in on and "mul+add+softmax" in on and "lines " not in off, on + off


# ----------------------------------------------------------------------------- model kernels

MODEL_SHAPES = {
    "tiny_gqa": dict(dim=48, hidden_dim=96, n_heads=6, n_kv_heads=2, seq_len=12),
    "stories15M": dict(dim=288, hidden_dim=768, n_heads=6, n_kv_heads=6, seq_len=256),
}


def layer_weights(shape, rng):
    d, h = shape["dim"], shape["hidden_dim"]
    kv = d // shape["n_heads"] * shape["n_kv_heads"]
    sizes = dict(wq=(d, d), wk=(kv, d), wv=(kv, d), wo=(d, d), w1=(h, d), w2=(d, h), w3=(h, d))
    return {k: (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for k, s in sizes.items()}


@pytest.mark.parametrize("shape_name,pipeline", [("tiny_gqa", "static"), ("tiny_gqa", "dynamic"),
                                                 ("stories15M", "dynamic")])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("name", ["attention_forward", "ffn_forward", "ffn_backward", "attention_backward"])
def test_training_kernels_bitwise_with_and_without_fusion(name, dtype, shape_name, pipeline):
    shape = MODEL_SHAPES[shape_name]
    rng = np.random.default_rng(sorted(MODEL_SHAPES).index(shape_name) * 10 + len(name) + len(dtype))
    w = layer_weights(shape, rng) if pipeline == "static" else None
    text, blobs, in_names, out_names, *_ = _native.model_kernel(name, shape, pipeline, dtype, "1.3/ios18", w)
    k = K.compile(text, weights=blobs, backend=backend(True, "fp16"))
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    arrays = [(rng.standard_normal(i.shape) * (0.05 if i.name.startswith("w") else 1.0)).astype(np_dtype)
              for i in k.inputs]
    outs = run_both(text, arrays, weights=blobs)
    assert all(np.isfinite(np.float32(o)).all() for o in outs)


# ----------------------------------------------------------------------------- long chains

def test_long_chain_compiles_in_time_linear_in_its_length():
    """Fusion's bookkeeping must not grow with the square of a run's length (it did: one pass
    over the run per op joining it). A 20,000-op chain that also reads values a few ops back
    (so scratch slots are reused) compiles with fusion on in a modest multiple of the time it
    takes with fusion off, measured here on the same program, and gives bitwise the same. Times
    are this process's CPU time, which other processes on the machine do not inflate."""
    import time
    n, shape = 20000, [1, 64]
    body, prev = [const("half", np.float32(0.5))], "x"
    for i in range(n):
        if i % 3 == 0:
            expr = f"add(x={prev}, y=x)"
        elif i % 3 == 1:
            expr = f"mul(x={prev}, y=half)"
        else:
            expr = f"sub(x={prev}, y={'v%d' % (i - 5) if i >= 5 else 'x'})"
        body.append(f'{ttype("fp32", shape)} v{i} = {expr}[name = string("v{i}")];')
        prev = f"v{i}"
    text = program([("x", "fp32", shape)], body, [prev, "v%d" % (n // 2)])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    seconds, outs = {}, {}
    for fuse in (False, True):
        t0 = time.process_time()
        k = K.compile(text, backend=backend(fuse, "fp32"))
        seconds[fuse] = time.process_time() - t0
        outs[fuse] = [np.empty(shape, np.float32) for _ in k.outputs]
        k.eval_into([x], outs[fuse])
    for a, b in zip(outs[False], outs[True]):
        assert np.array_equal(bits(a), bits(b))
    assert seconds[True] < 10 * seconds[False], seconds
