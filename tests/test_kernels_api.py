"""anetrain.kernels: compile, call, eval_into, backends, compile budget."""
import numpy as np
import pytest

import anetrain
import anetrain.kernels as K

from _milkit import blob_file, program, ttype

RELU = program([("x", "fp16", (2, 3))], [f'{ttype("fp16", (2, 3))} y = relu(x = x)[name = string("y")];'], ["y"])
TWO = program([("a", "fp16", (2, 3)), ("b", "fp32", (3,))],
              [f'{ttype("fp32", (2, 3))} s = add(x = a, y = b)[name = string("s")];',
               f'{ttype("fp16", (2, 3))} r = relu(x = a)[name = string("r")];'], ["r", "s"])


def test_call_positional_named_and_outputs(rng):
    a = rng.standard_normal((2, 3)).astype(np.float16)
    b = rng.standard_normal(3).astype(np.float32)
    k = K.compile(TWO, backend="ref", name="two")
    r, s = k(a, b)
    r2, s2 = k(b=b, a=a)
    np.testing.assert_array_equal(r, np.maximum(a, 0))
    np.testing.assert_array_equal(s, a.astype(np.float32) + b)
    np.testing.assert_array_equal(r, r2)
    np.testing.assert_array_equal(s, s2)
    assert r.dtype == np.float16 and s.dtype == np.float32
    assert k.inputs == [("a", "fp16", (2, 3)), ("b", "fp32", (3,))]
    assert k.outputs[0].name == "r" and k.outputs[1].dtype == "fp32" and k.outputs[1].shape == (2, 3)
    assert k.name == "two"
    with pytest.raises(TypeError, match="either positionally or by name"):
        k(a, b=b)
    with pytest.raises(TypeError, match="missing input"):
        k(a=a)


def test_single_output_is_an_array_and_fp32_accepted_for_fp16(rng):
    k = K.compile(RELU)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = k(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float16
    np.testing.assert_array_equal(y, np.maximum(x.astype(np.float16), 0))  # fp32 input is rounded (RNE) going in


def test_eval_into_preallocated_fp16_and_fp32(rng):
    k = K.compile(RELU)
    x = rng.standard_normal((2, 3)).astype(np.float16)
    o16 = np.empty((2, 3), np.float16)
    o32 = np.empty((2, 3), np.float32)
    k.eval_into([x], [o16])
    k.eval_into([x], [o32])
    np.testing.assert_array_equal(o16, np.maximum(x, 0))
    np.testing.assert_array_equal(o32, np.maximum(x, 0).astype(np.float32))
    with pytest.raises(ValueError, match=r"output 'y': expected shape \(2, 3\), got \(3, 2\)"):
        k.eval_into([x], [np.empty((3, 2), np.float16)])


def test_weights_and_non_contiguous_inputs(rng):
    w = rng.standard_normal((3, 4)).astype(np.float16)
    blob, offs = blob_file(w)
    text = program([("x", "fp16", (2, 3))], [
        f'{ttype("fp16", (3, 4))} W = const()[name = string("W"), val = {ttype("fp16", (3, 4))}(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({offs[0]})))];',
        f'{ttype("fp16", (2, 4))} y = matmul(x = x, y = W)[name = string("y")];'], ["y"])
    k = K.compile(text, weights={"@model_path/weights/w.bin": blob})
    xt = rng.standard_normal((3, 2)).astype(np.float16).T  # not C-contiguous
    want = (xt.astype(np.float64) @ w.astype(np.float64)).astype(np.float16)
    np.testing.assert_allclose(k(xt).astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_backends_singleton_and_properties():
    b = K.get_backend("ref")
    assert b is K.get_backend("ref") and b.name == "ref"
    assert b.budget is None and b.remaining is None
    assert b.supports("conv") and b.supports("scaled_dot_product_attention") and not b.supports("frobnicate")
    assert K.compile(RELU).backend is K.get_backend("auto") or anetrain.available_backends()[0] != "ref"
    with pytest.raises(ValueError, match="precision must be 'fp16' or 'fp32'"):
        K.new_backend("ref", precision="bf16")
    with pytest.raises(ValueError, match="unknown backend"):
        K.new_backend("gpu")


def test_compile_budget():
    b = K.new_backend("ref", compile_budget=2)
    assert b.budget == 2 and b.remaining == 2 and b.compiles == 0
    K.compile(RELU, backend=b)
    with pytest.raises(anetrain.MilError):  # a failed compile still counts
        K.compile(RELU.replace("relu", "nope"), backend=b)
    assert b.compiles == 2 and b.remaining == 0
    with pytest.raises(anetrain.CompileBudgetExceeded, match="compile budget of 2 exhausted.*checkpoint and restart the process"):
        K.compile(RELU, backend=b)
    assert b.compiles == 2  # the refused attempt compiled nothing
    assert issubclass(anetrain.CompileBudgetExceeded, anetrain.BackendError)
    b.budget = 3
    assert b.remaining == 1
    K.compile(RELU, backend=b)
    assert b.compiles == 3 and b.remaining == 0
    b.budget = None
    K.compile(RELU, backend=b)
    assert b.remaining is None and b.compiles == 4


def test_exceptions_are_exported():
    assert issubclass(anetrain.MilError, ValueError)
    assert issubclass(anetrain.BackendError, RuntimeError)
    assert anetrain.kernels.MilError is anetrain.MilError


def test_kernel_is_reusable_and_thread_safe(rng):
    import threading
    k = K.compile(RELU)
    xs = [rng.standard_normal((2, 3)).astype(np.float16) for _ in range(8)]
    results = [None] * 8

    def work(i):
        for _ in range(50):
            results[i] = k(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, r in zip(xs, results):
        np.testing.assert_array_equal(r, np.maximum(x, 0))


def test_returned_outputs_also_read_later_or_returned_twice(rng):
    """A returned value that later ops also read, one returned twice, a returned view, and an
    input returned as is: every binding of outputs to caller buffers gives the same values."""
    x = rng.standard_normal((2, 3)).astype(np.float16)
    text = program([("x", "fp16", (2, 3))], [
        f'{ttype("fp16", (2, 3))} a = mul(x = x, y = x)[name = string("a")];',
        f'{ttype("fp16", (2, 3))} b = add(x = a, y = x)[name = string("b")];',
        f'{ttype("fp16", (3, 2))} t = transpose(x = b, perm = tensor<int32, [2]>([1, 0]))[name = string("t")];',
        f'{ttype("fp16", (2, 3))} c = sigmoid(x = x)[name = string("c")];',
    ], ["a", "b", "t", "b", "x", "c"])
    k = K.compile(text)
    x32 = x.astype(np.float32)
    a = (x32 * x32).astype(np.float16)
    b = (a.astype(np.float32) + x32).astype(np.float16)
    c = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float16)
    for out_dtype in (np.float16, np.float32):
        outs = [np.full(o.shape, 7, out_dtype) for o in k.outputs]
        k.eval_into([x], outs)
        np.testing.assert_array_equal(outs[0], a.astype(out_dtype))
        np.testing.assert_array_equal(outs[1], b.astype(out_dtype))
        np.testing.assert_array_equal(outs[2], b.T.astype(out_dtype))
        np.testing.assert_array_equal(outs[3], b.astype(out_dtype))
        np.testing.assert_array_equal(outs[4], x.astype(out_dtype))
        np.testing.assert_allclose(outs[5].astype(np.float32), c.astype(np.float32), rtol=1e-3)


@pytest.mark.parametrize("op", ["matmul", "conv", "softmax", "sdpa", "silu"])
def test_fp16_and_fp32_output_buffers_agree(op, rng):
    """Ops write returned outputs straight into the caller's buffer: an fp32 buffer must receive
    exactly the fp16-rounded values an fp16 buffer receives."""
    x = rng.standard_normal((1, 4, 1, 6)).astype(np.float16)
    body = {
        "matmul": [f'{ttype("fp16", (1, 4, 6, 1))} t = transpose(x = x, perm = tensor<int32, [4]>([0, 1, 3, 2]))[name = string("t")];',
                   f'{ttype("fp16", (1, 4, 1, 1))} y = matmul(x = x, y = t)[name = string("y")];'],
        "conv": [f'{ttype("fp16", (3, 4, 1, 1))} W = const()[name = string("W"), val = {ttype("fp16", (3, 4, 1, 1))}([1, 2, 3, 4, 0.5, 0.25, 0.125, 1, -1, -2, 3, 0.1])];',
                 f'{ttype("fp16", (1, 3, 1, 6))} y = conv(x = x, weight = W)[name = string("y")];'],
        "softmax": [f'{ttype("fp16", (1, 4, 1, 6))} y = softmax(x = x, axis = int32(1))[name = string("y")];'],
        "sdpa": [f'{ttype("fp16", (1, 4, 1, 6))} y = scaled_dot_product_attention(query = x, key = x, value = x)[name = string("y")];'],
        "silu": [f'{ttype("fp16", (1, 4, 1, 6))} y = silu(x = x)[name = string("y")];'],
    }[op]
    k = K.compile(program([("x", "fp16", (1, 4, 1, 6))], body, ["y"]))
    o16 = np.empty(k.outputs[0].shape, np.float16)
    o32 = np.empty(k.outputs[0].shape, np.float32)
    k.eval_into([x], [o16])
    k.eval_into([x], [o32])
    np.testing.assert_array_equal(o32, o16.astype(np.float32))
