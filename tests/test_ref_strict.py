"""The ref backend is strict: every program problem is a MilError naming the line and the
problem; every bad evaluation input is an error naming the input; failures never leave stale
outputs."""
import struct

import numpy as np
import pytest

import anetrain
import anetrain.kernels as K

from _milkit import blob_file, const, program, ttype


def compile_error(body, inputs=(("x", "fp16", (2, 4)),), outputs=("y",), weights=None):
    text = program(list(inputs), body, list(outputs))
    with pytest.raises(anetrain.MilError) as e:
        K.compile(text, weights=weights, backend=K.new_backend("ref"))
    return e.value


def test_unknown_op():
    e = compile_error([f'{ttype("fp16", (2, 4))} y = frobnicate(x = x)[name = string("y")];'])
    assert e.line == 4 and "unknown op 'frobnicate'" in e.problem


def test_missing_required_argument():
    e = compile_error([f'{ttype("fp16", (2, 4))} y = add(x = x)[name = string("y")];'])
    assert e.line == 4 and "missing required argument 'y'" in e.problem


def test_unknown_argument_and_attribute():
    e = compile_error([f'{ttype("fp16", (2, 4))} y = relu(x = x, alpha = x)[name = string("y")];'])
    assert e.line == 4 and "unknown argument 'alpha'" in e.problem
    e = compile_error([f'{ttype("fp16", (2, 4))} y = relu(x = x)[name = string("y"), fast = bool(true)];'])
    assert e.line == 4 and "unknown attribute 'fast'" in e.problem


def test_name_must_be_a_string():
    e = compile_error([f'{ttype("fp16", (2, 4))} y = relu(x = x)[name = int32(3)];'])
    assert e.line == 4 and "name must be a string" in e.problem


def test_wrong_dtype_and_kind():
    e = compile_error([f'{ttype("int32", (2, 4))} y = softmax(x = x)[name = string("y")];'], inputs=[("x", "int32", (2, 4))])
    assert "must be fp16 or fp32, got int32" in e.problem
    e = compile_error([const("sh", np.array([4, 2], np.float32)), f'{ttype("fp16", (4, 2))} y = reshape(x = x, shape = sh)[name = string("y")];'])
    assert e.line == 5 and "must be an integer constant, got fp32" in e.problem
    e = compile_error([f'{ttype("fp16", (2, 4))} y = relu(x = (x, x))[name = string("y")];'])
    assert "must be a single value, not a tuple" in e.problem
    e = compile_error([f'{ttype("fp16", (4, 2))} y = transpose(x = x, perm = p)[name = string("y")];'],
                      inputs=[("x", "fp16", (2, 4)), ("p", "int32", (2,))])
    assert "perm must be a compile-time constant" in e.problem
    e = compile_error([f'{ttype("fp16", (4, 4))} y = concat(values = x, axis = int32(0))[name = string("y")];'])
    assert "must be a tuple" in e.problem


def test_declared_output_type_must_match():
    e = compile_error([f'{ttype("fp16", (4, 2))} y = relu(x = x)[name = string("y")];'])
    assert e.line == 4 and "declared tensor<fp16, [4, 2]> but the op produces tensor<fp16, [2, 4]>" in e.problem
    e = compile_error([f'{ttype("fp32", (2, 4))} y = relu(x = x)[name = string("y")];'])
    assert "declared tensor<fp32, [2, 4]> but the op produces tensor<fp16, [2, 4]>" in e.problem
    e = compile_error([f'{ttype("fp16", (2, 2))} y, {ttype("fp16", (2, 2))} z, {ttype("fp16", (2, 0))} w = split(x = x, axis = int32(1), num_splits = int32(2))[name = string("s")];'],
                      outputs=("y",))
    assert "produces 2 outputs but the statement declares 3" in e.problem


def test_shape_errors_name_the_problem():
    e = compile_error([f'{ttype("fp16", (2, 4))} y = add(x = x, y = z)[name = string("y")];'], inputs=[("x", "fp16", (2, 4)), ("z", "fp16", (3,))])
    assert "shapes [2, 4] and [3] do not broadcast" in e.problem
    e = compile_error([f'{ttype("fp16", (2, 2))} y = matmul(x = x, y = x)[name = string("y")];'])
    assert "inner dimensions differ" in e.problem
    e = compile_error([const("sh", np.array([3, 3], np.int32)), f'{ttype("fp16", (3, 3))} y = reshape(x = x, shape = sh)[name = string("y")];'])
    assert "cannot reshape [2, 4] (8 elements) to [3, 3]" in e.problem
    e = compile_error([const("b", np.array([0, 3], np.int32)), const("s", np.array([2, 2], np.int32)),
                       f'{ttype("fp16", (2, 2))} y = slice_by_size(x = x, begin = b, size = s)[name = string("y")];'])
    assert "out of range for dimension 1" in e.problem


W_DECL = 'tensor<fp16, [4, 4]> W = const()[name = string("W"), val = tensor<fp16, [4, 4]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({off})))];'


def blob_error(blob, off=64, path_given=True):
    weights = {"@model_path/weights/w.bin": blob} if path_given else {}
    return compile_error([W_DECL.format(off=off), f'{ttype("fp16", (2, 4))} y = matmul(x = x, y = W)[name = string("y")];'],
                         weights=weights)


def test_blob_problems():
    good, offs = blob_file(np.ones((4, 4), np.float16))
    e = blob_error(good, path_given=False)
    assert e.line == 4 and "blob file '@model_path/weights/w.bin' was not provided" in e.problem
    e = blob_error(good, off=len(good))
    assert "outside the" in e.problem
    e = blob_error(good, off=0)
    assert "no 0xDEADBEEF sentinel" in e.problem
    f32, _ = blob_file(np.ones((4, 4), np.float32))
    e = blob_error(f32)
    assert "holds fp32 data but the literal is declared tensor<fp16, [4, 4]>" in e.problem
    small, _ = blob_file(np.ones((3, 4), np.float16))
    e = blob_error(small)
    assert "holds 24 bytes but tensor<fp16, [4, 4]> needs 32" in e.problem
    truncated = good[:-40]
    e = blob_error(truncated)
    assert "runs past the end" in e.problem
    bad_offset = bytearray(good)
    struct.pack_into("<Q", bad_offset, 64 + 16, 1 << 60)
    e = blob_error(bytes(bad_offset))
    assert "runs past the end" in e.problem


def test_eval_inputs_checked_by_name():
    text = program([("x", "fp16", (2, 4))], [f'{ttype("fp16", (2, 4))} y = relu(x = x)[name = string("y")];'], ["y"])
    k = K.compile(text, backend=K.new_backend("ref"))
    with pytest.raises(ValueError, match=r"input 'x': expected shape \(2, 4\), got \(4, 2\)"):
        k(np.zeros((4, 2), np.float16))
    with pytest.raises(ValueError, match="input 'x': expected dtype float16 \\(or float32\\), got float64"):
        k(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="takes 1 input"):
        k()


def test_native_eval_errors_poison_outputs():
    text = program([("x", "fp16", (2, 4))], [f'{ttype("fp16", (2, 4))} y = relu(x = x)[name = string("y")];'], ["y"])
    nk = K.new_backend("ref")._native.compile(text, {}, "")
    out16 = np.ones((2, 4), np.float16)
    out32 = np.ones((2, 4), np.float32)
    with pytest.raises(anetrain.BackendError, match="input 'x': expected 8 elements, got 6"):
        nk.eval([np.zeros(6, np.float16)], [out16])
    assert np.isnan(out16).all()
    with pytest.raises(anetrain.BackendError, match="input 'x': expected dtype fp16, got int32"):
        nk.eval([np.zeros(8, np.int32)], [out32])
    assert np.isnan(out32).all()
    nk.eval([np.ones((2, 4), np.float16)], [out32])
    np.testing.assert_array_equal(out32, np.ones((2, 4), np.float32))


def test_redefinition_and_undefined_names_via_compile():
    e = compile_error([f'{ttype("fp16", (2, 4))} y = relu(x = x)[name = string("y")];',
                       f'{ttype("fp16", (2, 4))} y = relu(x = x)[name = string("y2")];'])
    assert e.line == 5 and "'y' is defined twice" in e.problem


def test_kernel_buffer_cap():
    # Six 1 GiB inputs: each within the per-tensor limit, together above the 4 GiB kernel cap.
    inputs = [(f"x{i}", "fp32", (1 << 28,)) for i in range(6)]
    e = compile_error([], inputs=inputs, outputs=("x0",))
    assert "needs more than 4 GiB of buffers" in e.problem
