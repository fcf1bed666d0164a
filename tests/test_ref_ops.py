"""Every ref-backend op against NumPy, with the ANE's rounding: an fp16 op output equals NumPy
computed in fp32 and rounded to fp16 (tolerance only where libm or accumulation order differ)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from _milkit import blob_file, const, f16, lit, program, run, ttype

FP16_ULP = 2.0 ** -10  # relative spacing of fp16 values


def assert_fp16_close(got, want, ulps=1, atol=0.0):
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float32)
    assert got.shape == want.shape
    tol = ulps * FP16_ULP * np.abs(want) + atol + 6e-8 * ulps
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"max err {np.abs(got - want).max()} at {np.argwhere(bad)[:3]}"


def unary_program(op, shape, dtype="fp16", extra=""):
    return program([("x", dtype, shape)], [f'{ttype(dtype, shape)} y = {op}(x = x{extra})[name = string("y")];'], ["y"])


def binary_program(op, xs, ys, zs, dtype="fp16", ydtype=None, zdtype=None):
    return program([("x", dtype, xs), ("y", ydtype or dtype, ys)],
                   [f'{ttype(zdtype or dtype, zs)} z = {op}(x = x, y = y)[name = string("z")];'], ["z"])


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
    "maximum": np.maximum, "minimum": np.minimum,
}
BROADCASTS = [
    ((1, 8, 1, 16), (1, 8, 1, 16)),    # same shape
    ((1, 8, 1, 16), ()),               # scalar
    ((1, 8, 1, 16), (1, 1, 1, 16)),    # row broadcast
    ((1, 8, 1, 16), (1, 8, 1, 1)),     # channel broadcast
    ((2, 3, 5, 5), (1, 1, 5, 5)),      # [1,H,S,S] + mask
    ((3, 1, 4), (5, 1)),               # both sides broadcast
    ((64, 1024), (64, 1024)),          # big enough to use threads
]


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("xs,ys", BROADCASTS)
def test_binary_fp16_matches_numpy_rounded(op, xs, ys, rng):
    x = rng.standard_normal(xs).astype(np.float16)
    y = (rng.standard_normal(ys) + (3.0 if op == "real_div" else 0.0)).astype(np.float16)
    zs = np.broadcast_shapes(xs, ys)
    if len(ys) == 0:
        text = program([("x", "fp16", xs)], [const("s", y), f'{ttype("fp16", zs)} z = {op}(x = x, y = s)[name = string("z")];'], ["z"])
        got = run(text, x)
    else:
        got = run(binary_program(op, xs, ys, zs), x, y)
    want = f16(BINARY[op](x.astype(np.float32), y.astype(np.float32)))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def test_pow_and_fp32_and_int32(rng):
    x = (rng.random((4, 6)) + 0.5).astype(np.float16)
    y = rng.standard_normal((1, 6)).astype(np.float16)
    assert_fp16_close(run(binary_program("pow", (4, 6), (1, 6), (4, 6)), x, y), f16(np.power(x.astype(np.float32), y.astype(np.float32))))
    a = rng.standard_normal((3, 7)).astype(np.float32)
    b = rng.standard_normal((3, 7)).astype(np.float32)
    got = run(binary_program("mul", (3, 7), (3, 7), (3, 7), dtype="fp32"), a, b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a * b)  # fp32 tensors are not rounded to fp16
    i = rng.integers(-1000, 1000, (2, 5)).astype(np.int32)
    j = rng.integers(-1000, 1000, (5,)).astype(np.int32)
    for op, f in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("maximum", np.maximum)]:
        np.testing.assert_array_equal(run(binary_program(op, (2, 5), (5,), (2, 5), dtype="int32"), i, j), f(i, j))


def test_mixed_fp16_fp32_promotes_to_fp32(rng):
    x = rng.standard_normal((2, 3)).astype(np.float16)
    y = rng.standard_normal((2, 3)).astype(np.float32)
    got = run(binary_program("add", (2, 3), (2, 3), (2, 3), ydtype="fp32", zdtype="fp32"), x, y)
    np.testing.assert_array_equal(got, x.astype(np.float32) + y)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_binary_broadcasting_property(xs, data):
    ys = [data.draw(st.sampled_from([d, 1])) for d in xs][data.draw(st.integers(0, len(xs))):]
    rng = np.random.default_rng(len(xs))
    x = rng.standard_normal(xs).astype(np.float16)
    y = rng.standard_normal(ys).astype(np.float16)
    zs = np.broadcast_shapes(tuple(xs), tuple(ys))  # ys may be [] (a rank-0 y broadcasts to x's shape)
    got = run(binary_program("sub", xs, ys, zs), x, y)
    np.testing.assert_array_equal(got, f16(x.astype(np.float32) - y.astype(np.float32)))


UNARY = {
    "exp": np.exp, "sqrt": np.sqrt, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0),
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "silu": lambda v: v / (1 + np.exp(-v)),
    "rsqrt": lambda v: 1 / np.sqrt(v + 1e-12),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op, rng):
    shape = (1, 16, 1, 40)
    x = rng.standard_normal(shape).astype(np.float16)
    if op in ("sqrt", "rsqrt"):
        x = np.abs(x) + np.float16(0.01)
    got = run(unary_program(op, shape), x)
    want = f16(UNARY[op](x.astype(np.float64)))
    assert_fp16_close(got, want, ulps=1)


def test_rsqrt_epsilon(rng):
    x = (rng.random((3, 4)) + 0.1).astype(np.float32)
    got = run(unary_program("rsqrt", (3, 4), "fp32", ", epsilon = fp32(0.5)"), x)
    np.testing.assert_allclose(got, 1 / np.sqrt(x + 0.5), rtol=1e-6)


@pytest.mark.parametrize("shape,axis", [((1, 4, 16, 16), -1), ((1, 32, 1, 8), 1), ((2, 3, 4), 0), ((5,), 0)])
def test_softmax(shape, axis, rng):
    x = (3 * rng.standard_normal(shape)).astype(np.float16)
    text = program([("x", "fp16", shape)], [const("ax", np.int32(axis)),
                                            f'{ttype("fp16", shape)} y = softmax(x = x, axis = ax)[name = string("y")];'], ["y"])
    x32 = x.astype(np.float64)
    e = np.exp(x32 - x32.max(axis=axis, keepdims=True))
    assert_fp16_close(run(text, x), f16(e / e.sum(axis=axis, keepdims=True)), ulps=1, atol=1e-7)


def reduce_program(op, shape, axes, keep, out_shape, dtype):
    body = [const("kd", np.bool_(keep))]
    args = "x = x, keep_dims = kd"
    if axes is not None:
        body.append(const("ax", np.array(axes, np.int32)))
        args += ", axes = ax"
    t = ttype(dtype, out_shape) if out_shape else dtype
    body.append(f'{t} y = {op}({args})[name = string("y")];')
    return program([("x", dtype, shape)], body, ["y"])


@pytest.mark.parametrize("op,f", [("reduce_sum", np.sum), ("reduce_mean", np.mean), ("reduce_max", np.max)])
@pytest.mark.parametrize("axes,keep", [([1], True), ([-1], True), ([0, 2], False), (None, False), (None, True), ([1, 3], False)])
def test_reduce(op, f, axes, keep, rng):
    shape = (2, 24, 3, 40)
    x = rng.standard_normal(shape).astype(np.float16)
    want = f(x.astype(np.float64), axis=None if axes is None else tuple(axes), keepdims=keep)
    got = run(reduce_program(op, shape, axes, keep, np.shape(want), "fp16"), x)
    assert_fp16_close(got, f16(want), ulps=1, atol=2e-3 if op == "reduce_sum" else 1e-4)


def matmul_program(xs, ys, zs, tx, ty, dtype="fp16"):
    return program([("x", dtype, xs), ("y", dtype, ys)],
                   [const("tx", np.bool_(tx)), const("ty", np.bool_(ty)),
                    f'{ttype(dtype, zs)} z = matmul(x = x, y = y, transpose_x = tx, transpose_y = ty)[name = string("z")];'],
                   ["z"])


@pytest.mark.parametrize("xs,ys,tx,ty", [
    ((1, 12, 16, 8), (1, 12, 8, 16), False, False),
    ((1, 4, 16, 8), (1, 4, 16, 8), False, True),
    ((1, 4, 8, 16), (1, 4, 8, 16), True, False),
    ((2, 1, 5, 7), (3, 7, 4), False, False),  # batch broadcasting
    ((7,), (2, 7, 3), False, False),           # 1-D x
    ((4, 7), (7,), False, False),              # 1-D y
    ((6, 7), (5, 6), True, True),
])
def test_matmul(xs, ys, tx, ty, rng):
    x = rng.standard_normal(xs).astype(np.float16)
    y = rng.standard_normal(ys).astype(np.float16)
    xm = np.swapaxes(x, -1, -2) if tx else x
    ym = np.swapaxes(y, -1, -2) if ty else y
    want = np.matmul(xm.astype(np.float64), ym.astype(np.float64))
    got = run(matmul_program(xs, ys, want.shape, tx, ty), x, y)
    assert_fp16_close(got, f16(want), ulps=1, atol=1e-3)


def triangular(rng, shape, zero_above):
    """Random values with the strict upper (zero_above) or lower triangle of each matrix zeroed,
    as causal attention's probabilities are, some of the zeros negative."""
    m = rng.standard_normal(shape).astype(np.float32)
    n = shape[-1]
    keep = np.tril(np.ones((n, n), bool)) if zero_above else np.triu(np.ones((n, n), bool))
    return np.where(keep, m, np.where(rng.random(shape) < 0.5, -0.0, 0.0)).astype(np.float32)


def full_product(x, y, tx, ty):
    xm = np.swapaxes(x, -1, -2) if tx else x
    ym = np.swapaxes(y, -1, -2) if ty else y
    with np.errstate(invalid="ignore", over="ignore"):
        return np.matmul(xm.astype(np.float64), ym.astype(np.float64))


def assert_product(got, want, x, y, tx, ty):
    got = np.asarray(got, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    ok = np.isfinite(want)
    scale = full_product(np.abs(np.nan_to_num(x)), np.abs(np.nan_to_num(y)), tx, ty)
    assert (np.abs(got[ok] - want[ok]) <= 1e-5 * scale[ok] + 1e-6).all()


# Square operands with a zero triangle (the ref backend skips the triangle's products; the
# result must be the full product's): either operand, either triangle, stored either way, one
# product or a batch of them (one per thread).
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("square", ["x", "y"])
@pytest.mark.parametrize("zero_above", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_triangular_operand(batch, square, zero_above, transposed, rng):
    n, e = 128, 24
    t = triangular(rng, (batch, n, n), zero_above)
    other = rng.standard_normal((batch, e, n) if square == "y" else (batch, n, e)).astype(np.float32)
    x, y = (other, t) if square == "y" else (t, other)
    tx, ty = (False, transposed) if square == "y" else (transposed, False)
    want = full_product(x, y, tx, ty)
    got = run(matmul_program(x.shape, y.shape, want.shape, tx, ty, "fp32"), x, y, precision="fp32")
    assert_product(got, want, x, y, tx, ty)


def test_matmul_nearly_triangular_and_non_finite_operands(rng):
    """A single nonzero in the would-be zero triangle must count (row 95 is the last row the
    check reaches whose column 127 lies outside the diagonal blocks of 32), and an inf in the
    other operand must make inf * 0 = NaN where the triangle's zeros meet it."""
    n, e = 128, 16
    t = triangular(rng, (1, n, n), True)
    x = rng.standard_normal((1, e, n)).astype(np.float32)
    prog = matmul_program(x.shape, t.shape, (1, e, n), False, False, "fp32")
    almost = t.copy()
    almost[0, 95, n - 1] = 1000.0
    want = full_product(x, almost, False, False)
    assert_product(run(prog, x, almost, precision="fp32"), want, x, almost, False, False)
    x_inf = x.copy()
    x_inf[0, 3, 5] = np.inf  # meets t[5, j] = 0 for j > 5: NaN there, inf for j <= 5
    want = full_product(x_inf, t, False, False)
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_product(run(prog, x_inf, t, precision="fp32"), want, x_inf, t, False, False)


def test_causal_attention_chain_matches_numpy(rng):
    """scores -> scale -> add the causal mask -> softmax -> matmul with v, as the model's kernels
    do it (heads batched, probabilities as y), in fp32: the zero triangle the softmax leaves is
    skipped and the result is the full product's."""
    H, E, S = 3, 16, 128
    q, k, v = (rng.standard_normal((H, 1, E, S)).astype(np.float32) for _ in range(3))
    mask = np.triu(np.full((S, S), -65504.0, np.float32), 1).reshape(1, 1, S, S)
    body = [const("t", np.bool_(True)), const("f", np.bool_(False)), const("c", np.float32(0.25), "fp32"),
            const("mask", mask, "fp32"), const("ax", np.int32(-1), "int32"),
            f'{ttype("fp32", (H, 1, S, S))} s = matmul(x = q, y = k, transpose_x = t, transpose_y = f)[name = string("s")];',
            f'{ttype("fp32", (H, 1, S, S))} sc = mul(x = s, y = c)[name = string("sc")];',
            f'{ttype("fp32", (H, 1, S, S))} sm = add(x = sc, y = mask)[name = string("sm")];',
            f'{ttype("fp32", (H, 1, S, S))} p = softmax(x = sm, axis = ax)[name = string("p")];',
            f'{ttype("fp32", (H, 1, E, S))} o = matmul(x = v, y = p, transpose_x = f, transpose_y = t)[name = string("o")];']
    text = program([("q", "fp32", q.shape), ("k", "fp32", k.shape), ("v", "fp32", v.shape)], body, ["o"])
    s = np.einsum("hxel,hxes->hxls", q.astype(np.float64), k.astype(np.float64)) * 0.25 + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("hxes,hxls->hxel", v.astype(np.float64), p)
    np.testing.assert_allclose(run(text, q, k, v, precision="fp32"), want, rtol=1e-4, atol=1e-5)


def test_dynamic_pipeline_slice_reshape_transpose_matmul(rng):
    """The dynamic pipeline's packed input: x[IC, S] and a weight block M[IC, OC] side by side."""
    IC, S, OC = 16, 8, 12
    packed = rng.standard_normal((1, IC, 1, S + OC)).astype(np.float16)
    body = [
        const("b0", np.array([0, 0, 0, 0], np.int32)), const("s0", np.array([1, IC, 1, S], np.int32)),
        const("b1", np.array([0, 0, 0, S], np.int32)), const("s1", np.array([1, IC, 1, OC], np.int32)),
        const("r0", np.array([1, 1, IC, S], np.int32)), const("r1", np.array([1, 1, IC, OC], np.int32)),
        const("pm", np.array([0, 1, 3, 2], np.int32)), const("ro", np.array([1, OC, 1, S], np.int32)),
        const("f", np.bool_(False)),
        f'{ttype("fp16", (1, IC, 1, S))} act = slice_by_size(x = x, begin = b0, size = s0)[name = string("act")];',
        f'{ttype("fp16", (1, IC, 1, OC))} wt = slice_by_size(x = x, begin = b1, size = s1)[name = string("wt")];',
        f'{ttype("fp16", (1, 1, IC, S))} a2 = reshape(x = act, shape = r0)[name = string("a2")];',
        f'{ttype("fp16", (1, 1, S, IC))} a3 = transpose(x = a2, perm = pm)[name = string("a3")];',
        f'{ttype("fp16", (1, 1, IC, OC))} w2 = reshape(x = wt, shape = r1)[name = string("w2")];',
        f'{ttype("fp16", (1, 1, S, OC))} y = matmul(x = a3, y = w2, transpose_x = f, transpose_y = f)[name = string("y")];',
        f'{ttype("fp16", (1, 1, OC, S))} yt = transpose(x = y, perm = pm)[name = string("yt")];',
        f'{ttype("fp16", (1, OC, 1, S))} out = reshape(x = yt, shape = ro)[name = string("out")];',
    ]
    got = run(program([("x", "fp16", (1, IC, 1, S + OC))], body, ["out"]), packed)
    p = packed.astype(np.float64)[0, :, 0, :]
    want = (p[:, S:].T @ p[:, :S]).reshape(1, OC, 1, S)
    assert_fp16_close(got, f16(want), ulps=1, atol=1e-3)


def conv_reference(x, w, b, strides, dil, pads, groups):
    """Direct loop convolution over 1-2 spatial dims (pads: [(before, after)] per dim)."""
    nsp = x.ndim - 2
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(pads))
    N, C = x.shape[:2]
    O = w.shape[0]
    K = w.shape[2:]
    out_sp = [(x.shape[2 + i] - (K[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nsp)]
    y = np.zeros((N, O) + tuple(out_sp))
    cg, og = C // groups, O // groups
    for o in range(O):
        g = o // og
        for idx in np.ndindex(*out_sp):
            acc = np.zeros(N)
            for kidx in np.ndindex(*K):
                pos = tuple(idx[i] * strides[i] + kidx[i] * dil[i] for i in range(nsp))
                acc += (x[(slice(None), slice(g * cg, (g + 1) * cg)) + pos] * w[(o, slice(None)) + kidx]).sum(axis=1)
            y[(slice(None), o) + idx] = acc
    if b is not None:
        y += b.reshape((1, O) + (1,) * nsp)
    return y


@pytest.mark.parametrize("case", [
    dict(xs=(1, 8, 1, 12), ws=(6, 8, 1, 1)),  # the 1x1 linear layer
    dict(xs=(2, 4, 7, 9), ws=(6, 4, 3, 3), strides=[2, 1], pad_type="valid"),
    dict(xs=(1, 4, 7, 9), ws=(6, 2, 3, 2), groups=2, pad_type="custom", pad=[1, 0, 2, 1], bias=True),
    dict(xs=(1, 3, 8, 8), ws=(4, 3, 3, 3), dil=[2, 1], pad_type="same"),
    dict(xs=(1, 3, 8, 8), ws=(4, 3, 2, 4), strides=[2, 3], pad_type="same"),
    dict(xs=(1, 3, 8, 8), ws=(4, 3, 2, 2), pad_type="same_lower"),
    dict(xs=(2, 6, 10), ws=(6, 1, 3), groups=6, pad_type="custom", pad=[1, 1], bias=True),  # 1-D depthwise
    dict(xs=(1, 4, 1, 12), ws=(8, 4, 1, 1), bias=True, strides=[1, 2]),
])
def test_conv_general(case, rng):
    xs, ws = case["xs"], case["ws"]
    nsp = len(xs) - 2
    strides = case.get("strides", [1] * nsp)
    dil = case.get("dil", [1] * nsp)
    groups = case.get("groups", 1)
    pad_type = case.get("pad_type", "valid")
    pad = case.get("pad", [0] * (2 * nsp))
    x = rng.standard_normal(xs).astype(np.float16)
    w = (rng.standard_normal(ws) * 0.3).astype(np.float16)
    b = rng.standard_normal(ws[0]).astype(np.float16) if case.get("bias") else None
    if pad_type == "custom":
        pads = [(pad[2 * i], pad[2 * i + 1]) for i in range(nsp)]
    elif pad_type in ("same", "same_lower"):
        pads = []
        for i in range(nsp):
            dk = (ws[2 + i] - 1) * dil[i] + 1
            total = max((-(-xs[2 + i] // strides[i]) - 1) * strides[i] + dk - xs[2 + i], 0)
            lo = total // 2 if pad_type == "same" else total - total // 2
            pads.append((lo, total - lo))
    else:
        pads = [(0, 0)] * nsp
    want = conv_reference(x, w.astype(np.float64), None if b is None else b.astype(np.float64), strides, dil, pads, groups)
    blob, offs = blob_file(w)
    body = [
        f'{ttype("fp16", ws)} W = const()[name = string("W"), val = {ttype("fp16", ws)}(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({offs[0]})))];',
        const("st", np.array(strides, np.int32)), const("dl", np.array(dil, np.int32)), const("gr", np.int32(groups)),
        const("pd", np.array(pad, np.int32)), f'string pt = const()[name = string("pt"), val = string("{pad_type}")];',
    ]
    args = "x = x, weight = W, strides = st, dilations = dl, groups = gr, pad = pd, pad_type = pt"
    if b is not None:
        body.append(const("B", b))
        args += ", bias = B"
    body.append(f'{ttype("fp16", want.shape)} y = conv({args})[name = string("y")];')
    got = run(program([("x", "fp16", xs)], body, ["y"]), x, weights={"@model_path/weights/w.bin": blob})
    # fp16 output of an fp32-accumulated dot product: compare at one fp16 ulp plus accumulation noise.
    assert_fp16_close(got, f16(want), ulps=1, atol=2e-3)


def test_views_slice_by_index_chain(rng):
    shape = (4, 6, 10)
    x = rng.standard_normal(shape).astype(np.float16)
    body = [
        const("b", np.array([1, 0, 9], np.int32)), const("e", np.array([4, 5, 0], np.int32)),
        const("s", np.array([2, 1, -3], np.int32)), const("bm", np.array([False, True, False])),
        const("em", np.array([False, False, False])), const("sq", np.array([False, False, False])),
        f'{ttype("fp16", (2, 5, 3))} a = slice_by_index(x = x, begin = b, end = e, stride = s, begin_mask = bm, end_mask = em, squeeze_mask = sq)[name = string("a")];',
        const("b2", np.array([1, 0, 0], np.int32)), const("e2", np.array([0, 0, 0], np.int32)),
        const("sq2", np.array([True, False, False])), const("em2", np.array([False, True, True])),
        f'{ttype("fp16", (6, 10))} c = slice_by_index(x = x, begin = b2, end = e2, end_mask = em2, squeeze_mask = sq2)[name = string("c")];',
        const("pm", np.array([1, 0], np.int32)),
        f'{ttype("fp16", (10, 6))} d = transpose(x = c, perm = pm)[name = string("d")];',
        const("sh", np.array([-1, 0], np.int32)),
        f'{ttype("fp16", (10, 6))} e2r = reshape(x = d, shape = sh)[name = string("e2r")];',
        const("sh2", np.array([5, -1], np.int32)),
        f'{ttype("fp16", (5, 12))} f = reshape(x = d, shape = sh2)[name = string("f")];',
        f'{ttype("fp16", (5, 12))} g = add(x = f, y = f)[name = string("g")];',
    ]
    a, e2r, f, g = run(program([("x", "fp16", shape)], body, ["a", "e2r", "f", "g"]), x)
    np.testing.assert_array_equal(a, x[1:4:2, :5, 9:0:-3])
    np.testing.assert_array_equal(e2r, x[1].T)
    np.testing.assert_array_equal(f, x[1].T.reshape(5, 12))
    np.testing.assert_array_equal(g, f16(2 * x[1].T.reshape(5, 12).astype(np.float32)))


def test_slice_by_size_concat_split(rng):
    x = rng.standard_normal((1, 6, 1, 8)).astype(np.float16)
    y = rng.standard_normal((1, 6, 1, 8)).astype(np.float16)
    body = [
        const("b", np.array([0, 2, 0, -5], np.int32)), const("s", np.array([1, -1, 1, 3], np.int32)),
        f'{ttype("fp16", (1, 4, 1, 3))} a = slice_by_size(x = x, begin = b, size = s)[name = string("a")];',
        const("ax", np.int32(1)), const("f", np.bool_(False)), const("t", np.bool_(True)),
        f'{ttype("fp16", (1, 12, 1, 8))} c = concat(axis = ax, interleave = f, values = (x, y))[name = string("c")];',
        const("ax3", np.int32(-1)),
        f'{ttype("fp16", (1, 6, 1, 16))} i = concat(axis = ax3, interleave = t, values = (x, y))[name = string("i")];',
        const("ns", np.int32(3)),
        f'{ttype("fp16", (1, 2, 1, 8))} p, {ttype("fp16", (1, 2, 1, 8))} q, {ttype("fp16", (1, 2, 1, 8))} r = split(x = x, axis = ax, num_splits = ns)[name = string("sp")];',
        const("ss", np.array([5, 3], np.int32)),
        f'{ttype("fp16", (1, 12, 1, 5))} u, {ttype("fp16", (1, 12, 1, 3))} v = split(x = c, split_sizes = ss, axis = ax3)[name = string("sp2")];',
    ]
    outs = run(program([("x", "fp16", x.shape), ("y", "fp16", y.shape)], body, ["a", "c", "i", "p", "r", "u", "v"]), x, y)
    a, c, i, p, r, u, v = outs
    np.testing.assert_array_equal(a, x[:, 2:, :, 3:6])
    np.testing.assert_array_equal(c, np.concatenate([x, y], axis=1))
    inter = np.stack([x, y], axis=-1).reshape(1, 6, 1, 16)
    np.testing.assert_array_equal(i, inter)
    np.testing.assert_array_equal(p, x[:, 0:2])
    np.testing.assert_array_equal(r, x[:, 4:6])
    np.testing.assert_array_equal(u, np.concatenate([x, y], axis=1)[..., :5])
    np.testing.assert_array_equal(v, np.concatenate([x, y], axis=1)[..., 5:])


@pytest.mark.parametrize("src,dst", [("fp32", "fp16"), ("fp16", "fp32"), ("fp32", "int32"), ("fp16", "int8"),
                                     ("int32", "fp16"), ("fp32", "bool"), ("fp32", "uint8")])
def test_cast(src, dst, rng):
    npd = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
    x = (rng.standard_normal((3, 5)) * 40).astype(npd[src])
    if dst in ("int8", "uint8"):
        x = np.clip(x, 0 if dst == "uint8" else -120, 120).astype(npd[src])
    if src == "fp32" and dst == "bool":
        x[0, :2] = 0
    text = program([("x", src, (3, 5))], [f'string d = const()[name = string("d"), val = string("{dst}")];',
                                         f'{ttype(dst, (3, 5))} y = cast(x = x, dtype = d)[name = string("y")];'], ["y"])
    got = run(text, x)
    want = x.astype(np.float32).astype(npd[dst]) if src != "int32" else x.astype(npd[dst])
    assert got.dtype == np.dtype(npd[dst])
    np.testing.assert_array_equal(got, want)


def test_quantize_dequantize_half_to_even(rng):
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, 300.0], [0.25, 0.75, 1.25, -2.5, -300.0, 3.49]], np.float32)
    body = [const("sc", np.float32(1.0)), const("zp", np.int8(0)),
            'string od = const()[name = string("od"), val = string("int8")];',
            f'{ttype("int8", (2, 6))} q = quantize(input = x, scale = sc, zero_point = zp, output_dtype = od)[name = string("q")];',
            const("sc2", np.array([0.5, 2.0], np.float32)), const("zp2", np.array([3, -1], np.int8)), const("ax", np.int32(0)),
            f'{ttype("fp32", (2, 6))} d = dequantize(input = q, scale = sc2, zero_point = zp2, axis = ax)[name = string("d")];']
    q, d = run(program([("x", "fp32", (2, 6))], body, ["q", "d"]), x)
    want_q = np.clip(np.round(x), -128, 127).astype(np.int8)  # np.round is half to even
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(d, np.array([[0.5], [2.0]], np.float32) * (want_q.astype(np.float32) - np.array([[3], [-1]])))


def test_quantize_uint8_per_axis(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float16)
    scale = np.array([0.01, 0.02, 0.05], np.float16)
    zp = np.array([128, 100, 0], np.uint8)
    body = [const("sc", scale), const("zp", zp), const("ax", np.int32(1)),
            'string od = const()[name = string("od"), val = string("uint8")];',
            f'{ttype("uint8", (2, 3, 4))} q = quantize(input = x, scale = sc, zero_point = zp, output_dtype = od, axis = ax)[name = string("q")];']
    q = run(program([("x", "fp16", (2, 3, 4))], body, ["q"]), x)
    want = np.clip(np.round(x.astype(np.float32) / scale.astype(np.float32).reshape(1, 3, 1)) + zp.reshape(1, 3, 1), 0, 255)
    np.testing.assert_array_equal(q, want.astype(np.uint8))


def test_constexpr_affine_dequantize_from_blob(rng):
    w = rng.integers(-128, 128, (6, 4, 1, 1)).astype(np.int8)
    scale = (rng.random(6) * 0.1 + 0.01).astype(np.float16)
    blob, offs = blob_file(np.zeros(3, np.float16), w)
    body = [f'{ttype("fp16", (6, 4, 1, 1))} W = constexpr_affine_dequantize()[axis = int32(0), name = string("W"), '
            f'quantized_data = {ttype("int8", (6, 4, 1, 1))}(BLOBFILE(path = string("@model_path/weights/q.bin"), offset = uint64({offs[1]}))), '
            f'scale = {lit(scale)}, zero_point = int8(2)];',
            f'{ttype("fp16", (1, 6, 1, 5))} y = conv(x = x, weight = W)[name = string("y")];']
    x = rng.standard_normal((1, 4, 1, 5)).astype(np.float16)
    got = run(program([("x", "fp16", (1, 4, 1, 5))], body, ["y"]), x, weights={"@model_path/weights/q.bin": blob})
    wf = f16(scale.astype(np.float32).reshape(6, 1) * (w.reshape(6, 4).astype(np.float32) - 2))
    want = f16(wf.astype(np.float64) @ x[0, :, 0, :].astype(np.float64)).reshape(1, 6, 1, 5)
    assert_fp16_close(got, want, ulps=1, atol=1e-3)


@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_scaled_dot_product_attention(mask, rng):
    B, H, L, S, E, EV = 1, 2, 5, 7, 8, 6
    q = rng.standard_normal((B, H, L, E)).astype(np.float16)
    k = rng.standard_normal((B, H, S, E)).astype(np.float16)
    v = rng.standard_normal((B, H, S, EV)).astype(np.float16)
    inputs = [("q", "fp16", q.shape), ("k", "fp16", k.shape), ("v", "fp16", v.shape)]
    arrays = [q, k, v]
    scores = q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2) / np.sqrt(E)
    args = "query = q, key = k, value = v"
    if mask == "float":
        m = (rng.standard_normal((1, 1, L, S)) * 2).astype(np.float16)
        inputs.append(("m", "fp16", m.shape))
        arrays.append(m)
        scores = scores + m
        args += ", attn_mask = m"
    elif mask == "bool":
        m = np.tril(np.ones((L, S), bool))
        inputs.append(("m", "bool", m.shape))
        arrays.append(m)
        scores = np.where(m, scores, -np.inf)
        args += ", attn_mask = m"
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = p @ v.astype(np.float64)
    text = program(inputs, [f'{ttype("fp16", want.shape)} o = scaled_dot_product_attention({args})[name = string("o")];'], ["o"])
    assert_fp16_close(run(text, *arrays), f16(want), ulps=1, atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int8, np.uint8])
def test_blob_constants_every_dtype(dtype, rng):
    a = (rng.standard_normal((3, 4)) * 50).astype(dtype)
    b = (rng.standard_normal(5) * 50).astype(dtype)
    blob, offs = blob_file(a, b)
    mil = {np.float16: "fp16", np.float32: "fp32", np.int8: "int8", np.uint8: "uint8"}[dtype]
    body = [f'{ttype(mil, (5,))} B = const()[name = string("B"), val = {ttype(mil, (5,))}(BLOBFILE(path = string("@model_path/weights/c.bin"), offset = uint64({offs[1]})))];',
            f'{ttype(mil, (3, 4))} A = const()[name = string("A"), val = {ttype(mil, (3, 4))}(BLOBFILE(path = string("@model_path/weights/c.bin"), offset = uint64({offs[0]})))];']
    text = program([], body, ["A", "B"])
    got_a, got_b = run(text, weights={"@model_path/weights/c.bin": blob})
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_b, b)


def test_fp32_precision_mode_does_not_round(rng):
    x = rng.standard_normal((2, 8)).astype(np.float32)
    y = rng.standard_normal((2, 8)).astype(np.float32)
    text = binary_program("mul", (2, 8), (2, 8), (2, 8))
    out16 = np.empty((2, 8), np.float32)
    out32 = np.empty((2, 8), np.float32)
    import anetrain.kernels as K
    K.compile(text, backend=K.new_backend("ref")).eval_into([x, y], [out16])
    K.compile(text, backend=K.new_backend("ref", precision="fp32")).eval_into([x, y], [out32])
    np.testing.assert_array_equal(out32, x * y)  # fp16 tensors fed as fp32 keep full precision
    np.testing.assert_array_equal(out16, f16(f16(x).astype(np.float32) * f16(y).astype(np.float32)).astype(np.float32))
    assert not np.array_equal(out16, out32)


def test_fp16_rounding_at_every_op_output():
    # 1 + 2^-11 is not representable in fp16: the add must round (to 1.0, ties to even) before the
    # next op sees it, so (x + e) - x == 0 in fp16 mode and == e in fp32 mode.
    x = np.ones((1, 4), np.float32)
    body = [const("e", np.float16(2.0 ** -11), "fp16"),
            f'{ttype("fp16", (1, 4))} a = add(x = x, y = e)[name = string("a")];',
            f'{ttype("fp16", (1, 4))} d = sub(x = a, y = x)[name = string("d")];']
    text = program([("x", "fp16", (1, 4))], body, ["d"])
    np.testing.assert_array_equal(run(text, x), np.zeros((1, 4), np.float16))
    np.testing.assert_array_equal(run(text, x, precision="fp32"), np.full((1, 4), 2.0 ** -11, np.float16))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.booleans(), st.booleans(), st.booleans())
def test_matmul_random_shapes(batch, M, K, N, tx, ty, bcast):
    rng = np.random.default_rng(M * 100 + K * 10 + N)
    xs = (batch, K, M) if tx else (batch, M, K)
    ys = (K if not ty else N, N if not ty else K)
    ys = ys if bcast else (batch,) + ys
    x = rng.standard_normal(xs).astype(np.float16)
    y = rng.standard_normal(ys).astype(np.float16)
    xm = np.swapaxes(x, -1, -2) if tx else x
    ym = np.swapaxes(y, -1, -2) if ty else y
    want = np.matmul(xm.astype(np.float64), ym.astype(np.float64))
    assert_fp16_close(run(matmul_program(xs, ys, want.shape, tx, ty), x, y), f16(want), ulps=1, atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_reduce_random_axes(shape, data):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank, unique_by=lambda a: a % rank))
    keep = data.draw(st.booleans())
    x = np.random.default_rng(rank).standard_normal(shape).astype(np.float32)
    want = x.astype(np.float64).sum(axis=tuple(axes), keepdims=keep)
    t = ttype("fp32", want.shape) if want.ndim else "fp32"
    body = [const("ax", np.array(axes, np.int32)), const("kd", np.bool_(keep)),
            f'{t} y = reduce_sum(x = x, axes = ax, keep_dims = kd)[name = string("y")];']
    got = run(program([("x", "fp32", shape)], body, ["y"]), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.data())
def test_transpose_slice_reshape_chain(shape, data):
    """Views stacked on views: transpose, then slice, then reshape (view or copy), then an op."""
    rank = len(shape)
    perm = data.draw(st.permutations(range(rank)))
    x = np.random.default_rng(rank).standard_normal(shape).astype(np.float16)
    t = np.transpose(x, perm)
    begin = [data.draw(st.integers(0, d - 1)) for d in t.shape]
    size = [data.draw(st.integers(1, d - b)) for d, b in zip(t.shape, begin)]
    s = t[tuple(slice(b, b + n) for b, n in zip(begin, size))]
    flat = (-1,) if data.draw(st.booleans()) else (s.shape[0], -1)
    r = s.reshape(flat)
    body = [const("pm", np.array(perm, np.int32)), const("b", np.array(begin, np.int32)),
            const("s", np.array(size, np.int32)), const("sh", np.array(flat, np.int32)),
            f'{ttype("fp16", t.shape)} t = transpose(x = x, perm = pm)[name = string("t")];',
            f'{ttype("fp16", s.shape)} v = slice_by_size(x = t, begin = b, size = s)[name = string("v")];',
            f'{ttype("fp16", r.shape)} r = reshape(x = v, shape = sh)[name = string("r")];',
            f'{ttype("fp16", r.shape)} y = mul(x = r, y = fp16(3.0))[name = string("y")];']
    got_r, got_y = run(program([("x", "fp16", shape)], body, ["r", "y"]), x)
    np.testing.assert_array_equal(got_r, r)
    np.testing.assert_array_equal(got_y, f16(r.astype(np.float32) * 3))


def test_exp_accuracy_and_special_values_fp32():
    x = np.concatenate([np.linspace(-87, 88, 20001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, -87.5, -100.0, -np.inf, 88.5, 100.0, np.inf, np.nan], np.float32)])
    got = run(unary_program("exp", x.shape, "fp32"), x)
    want = np.exp(x.astype(np.float64))
    finite = np.isfinite(want) & (want < 1.7e38) & (x >= -87) & (x <= 88)
    np.testing.assert_allclose(got[finite], want[finite], rtol=3e-7)
    assert got[x == -np.inf][0] == 0 and got[x == -100][0] == 0 and got[x == np.inf][0] == np.inf
    assert np.isnan(got[-1])


# ---------------------------------------------------------------- large tensors (threaded paths)
# A contiguous tensor coalesces into one long row, which the executor cuts into pieces for the
# threads; reductions over the inner axis run rows in parallel. These sizes take those paths.

@pytest.mark.parametrize("shape", [(1, 2048, 1, 256), (3, 40000), (1, 1, 1, 65536 + 8), (4, 65536)])
def test_large_contiguous_unary_and_binary(shape, rng):
    x = rng.standard_normal(shape).astype(np.float16)
    y = rng.standard_normal(shape).astype(np.float16)
    got = run(unary_program("sigmoid", shape), x)
    assert_fp16_close(got, f16(1 / (1 + np.exp(-x.astype(np.float64)))), ulps=1)
    got = run(binary_program("mul", shape, shape, shape), x, y)
    np.testing.assert_array_equal(got, f16(x.astype(np.float32) * y.astype(np.float32)))
    row = shape[:-1] + (1,)  # row broadcast over the long axis
    z = rng.standard_normal(row).astype(np.float16)
    got = run(binary_program("add", shape, row, shape), x, z)
    np.testing.assert_array_equal(got, f16(x.astype(np.float32) + z.astype(np.float32)))
    col = (1,) + shape[1:]  # the long axis itself broadcast over the first
    z = rng.standard_normal(col).astype(np.float16)
    got = run(binary_program("sub", shape, col, shape), x, z)
    np.testing.assert_array_equal(got, f16(x.astype(np.float32) - z.astype(np.float32)))


@pytest.mark.parametrize("axes,keep", [([-1], True), (None, False), ([0], False), ([1, 3], True)])
def test_large_reduce_sum(axes, keep, rng):
    shape = (12, 2, 64, 256)
    x = rng.standard_normal(shape).astype(np.float32)
    want = np.sum(x.astype(np.float64), axis=None if axes is None else tuple(axes), keepdims=keep)
    got = run(reduce_program("reduce_sum", shape, axes, keep, np.shape(want), "fp32"), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_softmax_large_and_special_values(rng):
    shape = (12, 1, 256, 256)
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    x[0, 0, 3, 7] = np.nan      # a NaN makes its whole row NaN (as NumPy's softmax does)
    x[1, 0, 5, :100] = -np.inf  # masked entries get probability 0
    text = program([("x", "fp32", shape)], [const("ax", np.int32(-1)),
                                            f'{ttype("fp32", shape)} y = softmax(x = x, axis = ax)[name = string("y")];'], ["y"])
    got = run(text, x)
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        e = np.exp(x64 - np.nanmax(x64, axis=-1, keepdims=True))
        want = e / e.sum(axis=-1, keepdims=True)
    assert np.isnan(got[0, 0, 3]).all() and not np.isnan(got[0, 0, 4]).any()
    np.testing.assert_array_equal(got[1, 0, 5, :100], 0.0)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-7)


def test_ref_profile_env_prints_per_op_times(tmp_path):
    """ANETRAIN_REF_PROFILE=1: a kernel prints its per-op times (by line and op) when it goes."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, anetrain.kernels as K\n"
        "text = '''" + unary_program("sigmoid", (4, 64)) + "'''\n"
        "k = K.compile(text, backend='ref', name='probe')\n"
        "for _ in range(3): k(np.ones((4, 64), np.float16))\n"
        "del k\n"
    )
    env = dict(os.environ, ANETRAIN_REF_PROFILE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ref profile of 'probe'" in out.stderr and "over 3 evals" in out.stderr
    assert "sigmoid -> y" in out.stderr
    env["ANETRAIN_REF_PROFILE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "ref profile" not in out.stderr
