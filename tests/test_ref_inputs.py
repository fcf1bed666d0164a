"""Program inputs on the ref backend: matmul, conv and the view ops read an input in the caller's
buffer, and a batched matmul converts fp16 (or fp32-to-round) caller data product by product.
Element-wise ops, softmax and row reductions read it there too when it needs no conversion.
Every other reader makes the kernel copy the input in first. Either way the results must be
those of NumPy on the inputs as the program sees them (fp16-rounded in fp16 mode), and nothing
may depend on the caller's arrays after eval returns."""
import numpy as np
import pytest

import anetrain
import anetrain.kernels as K
from anetrain import _native

from _milkit import const, f16, program, ttype
from test_ref_ops import assert_fp16_close


def compile_ref(text, precision="fp16"):
    return K.compile(text, backend=K.new_backend("ref", precision=precision))


def matmul_line(x, y, out_shape, dtype="fp16", tx="f", ty="f", name="z"):
    return (f'{ttype(dtype, out_shape)} {name} = matmul(x = {x}, y = {y}, transpose_x = {tx}, '
            f'transpose_y = {ty})[name = string("{name}")];')


FLAGS = [const("f", np.bool_(False)), const("t", np.bool_(True))]


def matmul64(x, y):
    return np.matmul(np.asarray(x, np.float64), np.asarray(y, np.float64))


@pytest.fixture(params=[2, 1], ids=["threads2", "threads1"])
def threads(request):
    """Kernels compiled with two pool threads (one product per thread) and with one."""
    before = anetrain.info()["threads"]
    _native.set_num_threads(request.param)
    yield request.param
    _native.set_num_threads(before)


def packed_attention_program(B, S, D, dtype):
    """q and k side by side in one input p [B, S, 2D]: q = p[..., :D], k = p[..., D:] (strided
    rows), scores = q @ k^T, plus a [B, S, D] x [B, D, S] matmul from a second input."""
    body = FLAGS + [
        const("b0", np.array([0, 0, 0], np.int32)), const("b1", np.array([0, 0, D], np.int32)),
        const("sz", np.array([B, S, D], np.int32)),
        f'{ttype(dtype, (B, S, D))} q = slice_by_size(x = p, begin = b0, size = sz)[name = string("q")];',
        f'{ttype(dtype, (B, S, D))} k = slice_by_size(x = p, begin = b1, size = sz)[name = string("k")];',
        matmul_line("q", "k", (B, S, S), dtype, ty="t", name="s"),
        matmul_line("q", "w", (B, S, S), dtype, name="u"),
    ]
    return program([("p", dtype, (B, S, 2 * D)), ("w", dtype, (B, D, S))], body, ["s", "u"])


def check_packed_attention(kernel, p, w, rounded, out_dtype=np.float16):
    """rounded: the program's view of the inputs (what NumPy multiplies)."""
    D = p.shape[-1] // 2
    outs = [np.empty(o.shape, out_dtype) for o in kernel.outputs]
    kernel.eval_into([p, w], outs)
    rp, rw = rounded(p), rounded(w)
    for got, want in zip(outs, (matmul64(rp[..., :D], np.swapaxes(rp[..., D:], -1, -2)), matmul64(rp[..., :D], rw))):
        if out_dtype == np.float16:
            assert_fp16_close(got, f16(want), ulps=1, atol=1e-3)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return outs


def test_fp16_data_converted_per_product(threads, rng):
    B, S, D = 4, 16, 8
    kernel = compile_ref(packed_attention_program(B, S, D, "fp16"))
    for _ in range(2):  # a second evaluation with other data: nothing stale from the first
        p = rng.standard_normal((B, S, 2 * D)).astype(np.float16)
        w = rng.standard_normal((B, D, S)).astype(np.float16)
        check_packed_attention(kernel, p, w, lambda a: a)


def quarter_ulp_off(a16):
    """fp32 values a quarter of an fp16 ulp away from the fp16 values a16: rounding to fp16 gives
    a16 back, and computing without that rounding gives visibly different sums."""
    a = a16.astype(np.float32)
    ulp = np.spacing(np.abs(a16)).astype(np.float32)
    return a + np.where(a16 >= 0, 0.25, -0.25).astype(np.float32) * ulp


def test_fp32_data_into_fp16_program_is_rounded(threads, rng):
    B, S, D = 4, 16, 8
    kernel = compile_ref(packed_attention_program(B, S, D, "fp16"))
    p16 = rng.standard_normal((B, S, 2 * D)).astype(np.float16)
    w16 = rng.standard_normal((B, D, S)).astype(np.float16)
    p, w = quarter_ulp_off(p16), quarter_ulp_off(w16)
    assert np.array_equal(f16(p), p16) and np.array_equal(f16(w), w16)
    got = check_packed_attention(kernel, p, w, f16)
    # the data tells rounding from not rounding apart
    unrounded = f16(matmul64(p[..., :D], np.swapaxes(p[..., D:], -1, -2)))
    assert (np.abs(unrounded.astype(np.float32) - got[0].astype(np.float32)) > 1e-3).any()


@pytest.mark.parametrize("host", [np.float32, np.float16])
def test_fp32_precision_mode(threads, host, rng):
    B, S, D = 4, 16, 8
    kernel = compile_ref(packed_attention_program(B, S, D, "fp16"), precision="fp32")
    p16 = rng.standard_normal((B, S, 2 * D)).astype(np.float16)
    w16 = rng.standard_normal((B, D, S)).astype(np.float16)
    p, w = (quarter_ulp_off(p16), quarter_ulp_off(w16)) if host == np.float32 else (p16, w16)
    check_packed_attention(kernel, p, w, lambda a: a.astype(np.float32), out_dtype=np.float32)


def test_fp32_program_views_into_matmul_and_conv(rng):
    """The dynamic pipeline's packed input: slices, reshapes and transposes of one input feed
    matmuls and a conv (that slice is not contiguous, so conv copies it first); a second conv
    reads a contiguous channel slice of another input."""
    IC, S, OC = 8, 12, 6
    wc = rng.standard_normal((OC, IC, 1, 1)).astype(np.float32)
    body = FLAGS + [
        const("b0", np.array([0, 0, 0, 0], np.int32)), const("s0", np.array([1, IC, 1, S], np.int32)),
        const("b1", np.array([0, 0, 0, S], np.int32)), const("s1", np.array([1, IC, 1, OC], np.int32)),
        const("r0", np.array([1, IC, S], np.int32)), const("r1", np.array([1, IC, OC], np.int32)),
        const("pm", np.array([0, 2, 1], np.int32)),
        f'{ttype("fp32", (1, IC, 1, S))} act = slice_by_size(x = x, begin = b0, size = s0)[name = string("act")];',
        f'{ttype("fp32", (1, IC, 1, OC))} wt = slice_by_size(x = x, begin = b1, size = s1)[name = string("wt")];',
        f'{ttype("fp32", (1, IC, S))} a2 = reshape(x = act, shape = r0)[name = string("a2")];',
        f'{ttype("fp32", (1, S, IC))} a3 = transpose(x = a2, perm = pm)[name = string("a3")];',
        f'{ttype("fp32", (1, IC, OC))} w2 = reshape(x = wt, shape = r1)[name = string("w2")];',
        matmul_line("a3", "w2", (1, S, OC), "fp32", name="y"),
        matmul_line("w2", "a2", (1, OC, S), "fp32", tx="t", name="yt"),
        const("W", wc),
        f'{ttype("fp32", (1, OC, 1, S))} cv = conv(x = act, weight = W)[name = string("cv")];',
        const("cb", np.array([0, IC, 0, 0], np.int32)), const("cs", np.array([1, IC, 1, S], np.int32)),
        f'{ttype("fp32", (1, IC, 1, S))} c = slice_by_size(x = c4, begin = cb, size = cs)[name = string("c")];',
        f'{ttype("fp32", (1, OC, 1, S))} cv2 = conv(x = c, weight = W)[name = string("cv2")];',
    ]
    text = program([("x", "fp32", (1, IC, 1, S + OC)), ("c4", "fp32", (1, 2 * IC, 1, S))], body,
                   ["y", "yt", "cv", "cv2"])
    kernel = compile_ref(text)
    w64 = wc.astype(np.float64)[:, :, 0, 0]
    for _ in range(2):
        x = rng.standard_normal((1, IC, 1, S + OC)).astype(np.float32)
        c4 = rng.standard_normal((1, 2 * IC, 1, S)).astype(np.float32)
        y, yt, cv, cv2 = kernel(x, c4)
        p = x.astype(np.float64)[0, :, 0, :]
        np.testing.assert_allclose(y[0], p[:, :S].T @ p[:, S:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(yt[0], p[:, S:].T @ p[:, :S], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cv[0, :, 0], w64 @ p[:, :S], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cv2[0, :, 0], w64 @ c4.astype(np.float64)[0, IC:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("host", [np.float16, np.float32])
@pytest.mark.parametrize("B,M,K,N", [(3, 5, 4, 6), (3, 150, 100, 6)], ids=["small", "copied-in-parallel"])
def test_input_read_by_matmul_and_elementwise_and_returned(threads, host, B, M, K, N, rng):
    """x feeds a batched matmul, an add and is returned as it is: it is copied in, and the
    matmul reads that copy; y is read by the matmul alone. The bigger x (45000 elements) is
    copied in by the pool's threads in pieces."""
    body = FLAGS + [matmul_line("x", "y", (B, M, N)),
                    f'{ttype("fp16", (B, M, K))} d = add(x = x, y = x)[name = string("d")];']
    kernel = compile_ref(program([("x", "fp16", (B, M, K)), ("y", "fp16", (B, K, N))], body, ["z", "d", "x"]))
    for _ in range(2):
        x = quarter_ulp_off(rng.standard_normal((B, M, K)).astype(np.float16)).astype(host)
        y = quarter_ulp_off(rng.standard_normal((B, K, N)).astype(np.float16)).astype(host)
        z, d, xr = kernel(x, y)
        assert_fp16_close(z, f16(matmul64(f16(x), f16(y))), ulps=1, atol=1e-3)
        np.testing.assert_array_equal(d, f16(2 * f16(x).astype(np.float32)))
        np.testing.assert_array_equal(xr, f16(x))


@pytest.mark.parametrize("xs,ys", [
    ((2, 1, 5, 4), (3, 4, 6)),  # both broadcast: copied in
    ((4, 5, 4), (4, 6)),        # y shared by every product: x converted per product, y copied in
    ((4, 5, 4), (4,)),          # 1-D y
    ((5, 4), (4, 4, 6)),        # x shared
])
@pytest.mark.parametrize("host", [np.float16, np.float32])
def test_broadcast_batch_dims(threads, xs, ys, host, rng):
    out_shape = np.matmul(np.zeros(xs), np.zeros(ys)).shape
    kernel = compile_ref(program([("x", "fp16", xs), ("y", "fp16", ys)], FLAGS + [matmul_line("x", "y", out_shape)], ["z"]))
    for _ in range(2):
        x = quarter_ulp_off(rng.standard_normal(xs).astype(np.float16)).astype(host)
        y = quarter_ulp_off(rng.standard_normal(ys).astype(np.float16)).astype(host)
        assert_fp16_close(kernel(x, y), f16(matmul64(f16(x), f16(y))), ulps=1, atol=1e-3)


@pytest.mark.parametrize("M,K,N", [(1000, 300, 40), (40, 300, 1000)])  # split by rows of x / columns of y
@pytest.mark.parametrize("tx,ty", [("f", "f"), ("t", "f"), ("f", "t"), ("t", "t")])
@pytest.mark.parametrize("host", [np.float16, np.float32])
def test_single_big_product_converts_block_by_block(threads, M, K, N, tx, ty, host, rng):
    """A single product big enough to split (>= 2^22 multiply-adds) converts the operand it splits
    block by block (blocks of 16-row multiples that do not divide M or N here), read in the
    caller's buffer; the other operand is copied in. Same results as NumPy on the rounded inputs."""
    xs = (K, M) if tx == "t" else (M, K)
    ys = (N, K) if ty == "t" else (K, N)
    kernel = compile_ref(program([("x", "fp16", xs), ("y", "fp16", ys)], FLAGS + [matmul_line("x", "y", (M, N), tx=tx, ty=ty)], ["z"]))
    for _ in range(2):
        x = quarter_ulp_off(rng.standard_normal(xs).astype(np.float16)).astype(host)
        y = quarter_ulp_off(rng.standard_normal(ys).astype(np.float16)).astype(host)
        xm, ym = f16(x), f16(y)
        want = matmul64(xm.T if tx == "t" else xm, ym.T if ty == "t" else ym)
        assert_fp16_close(kernel(x, y), f16(want), ulps=1, atol=1e-3)


@pytest.mark.parametrize("dtype,host", [("fp16", np.float16), ("fp16", np.float32), ("fp32", np.float32)])
def test_inputs_are_not_held_after_eval(threads, dtype, host, rng):
    """Outputs depend only on the arrays of their own evaluation: changing or reusing an input
    array afterwards changes nothing, and an output that is also an input still gets the
    result computed from the input's old contents."""
    B, S = 3, 8
    kernel = compile_ref(program([("x", dtype, (B, S, S)), ("y", dtype, (B, S, S))], FLAGS + [matmul_line("x", "y", (B, S, S), dtype)], ["z"]))
    x = rng.standard_normal((B, S, S)).astype(host)
    y = rng.standard_normal((B, S, S)).astype(host)
    want = kernel(x, y)
    first = want.copy()
    x[...] = 7.0  # the caller reuses its input arrays
    y[...] = -1.0
    np.testing.assert_array_equal(want, first)
    assert_fp16_close(kernel(x, y), f16(matmul64(f16(x), f16(y))), ulps=1, atol=1e-3)
    # the output overwrites input x: every product must still read x's old contents
    x = rng.standard_normal((B, S, S)).astype(host)
    want = kernel(x, y)
    kernel.eval_into([x, y], [x])
    np.testing.assert_array_equal(x, want.astype(host))


@pytest.mark.parametrize("fuse", ["1", "0"])
@pytest.mark.parametrize("precision,host", [("fp32", np.float32), ("fp16", np.float32), ("fp16", np.float16)])
def test_elementwise_softmax_and_reduce_read_inputs_in_place(threads, fuse, precision, host, monkeypatch, rng):
    """Slices of input p feed a chain of element-wise ops, a softmax and a row sum (fused into
    one tiled step, or op by op), and input w feeds a matmul and an add. Data that needs no
    conversion (fp32 data, fp32 precision) is read in the caller's buffer, at the slices' offsets;
    the rest is copied in. An output written over an input must still see the input's old values."""
    monkeypatch.setenv("ANETRAIN_REF_FUSE", fuse)
    B, S, D = 2, 16, 24
    dt = "fp32" if precision == "fp32" else "fp16"
    body = FLAGS + [
        const("b0", np.array([0, 0, 0], np.int32)), const("b1", np.array([0, 0, D], np.int32)),
        const("sz", np.array([B, S, D], np.int32)), const("ax", np.int32(-1)),
        const("axes", np.array([-1], np.int32)), const("kd", np.bool_(True)),
        f'{ttype(dt, (B, S, D))} a = slice_by_size(x = p, begin = b0, size = sz)[name = string("a")];',
        f'{ttype(dt, (B, S, D))} c = slice_by_size(x = p, begin = b1, size = sz)[name = string("c")];',
        f'{ttype(dt, (B, S, D))} m = mul(x = a, y = c)[name = string("m")];',
        f'{ttype(dt, (B, S, D))} e = sub(x = m, y = c)[name = string("e")];',
        f'{ttype(dt, (B, S, D))} sm = softmax(x = e, axis = ax)[name = string("sm")];',
        f'{ttype(dt, (B, S, 1))} r = reduce_sum(x = a, axes = axes, keep_dims = kd)[name = string("r")];',
        f'{ttype(dt, (B, S, D))} g = add(x = sm, y = r)[name = string("g")];',
        matmul_line("g", "w", (B, S, S), dt, name="z"),
        f'{ttype(dt, (B, D, S))} h = add(x = w, y = w)[name = string("h")];',
    ]
    kernel = compile_ref(program([("p", dt, (B, S, 2 * D)), ("w", dt, (B, D, S))], body, ["z", "h"]), precision)
    cast = (lambda v: v.astype(np.float32)) if precision == "fp32" else f16
    for _ in range(2):
        p = rng.standard_normal((B, S, 2 * D)).astype(host)
        w = rng.standard_normal((B, D, S)).astype(host)
        pr, wr = cast(p).astype(np.float64), cast(w).astype(np.float64)
        a, c = pr[..., :D], pr[..., D:]
        e = cast(cast(a * c) - c).astype(np.float64)
        sm = np.exp(e - e.max(-1, keepdims=True))
        sm = cast(sm / sm.sum(-1, keepdims=True)).astype(np.float64)
        g = cast(sm + cast(a.sum(-1, keepdims=True))).astype(np.float64)
        want_z, want_h = matmul64(g, wr), 2 * wr
        z, h = kernel(p, w)
        tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=4e-3, atol=4e-3)
        np.testing.assert_allclose(np.asarray(z, np.float64), want_z, **tol)
        np.testing.assert_allclose(np.asarray(h, np.float64), want_h, **tol)
        # h written over w: the add must read w's old values
        outs = [np.empty(kernel.outputs[0].shape, host), w]
        kernel.eval_into([p, w], outs)
        np.testing.assert_allclose(np.asarray(w, np.float64), want_h, **tol)
