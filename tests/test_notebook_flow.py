"""Issue 3's promise: a MIL program written by hand in a notebook, with weights packed by
anetrain.mil.pack_weights, compiles and runs on the ref backend and matches NumPy."""
import numpy as np
import pytest

import anetrain
from anetrain import _native
from anetrain.mil import Builder, boolean, int32, ints, pack_weights, string


def test_handwritten_program_with_packed_weights(rng):
    W = rng.standard_normal((24, 16)).astype(np.float32)
    gamma = rng.standard_normal(24).astype(np.float32)
    blob, (off_w, off_g) = pack_weights([W.reshape(24, 16, 1, 1), gamma.reshape(1, 24, 1, 1)], dtype="fp16")
    text = f"""program(1.3)
[buildInfo = dict<string, string>({{{{"coremlc-version", "3505.4.1"}}}})]
{{
    func main<ios18>(tensor<fp16, [1, 16, 1, 8]> x) {{
        tensor<fp16, [24, 16, 1, 1]> W = const()[name = string("W"), val = tensor<fp16, [24, 16, 1, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({off_w})))];
        tensor<fp16, [1, 24, 1, 1]> g = const()[name = string("g"), val = tensor<fp16, [1, 24, 1, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({off_g})))];
        string pt = const()[name = string("pt"), val = string("valid")];
        tensor<int32, [2]> st = const()[name = string("st"), val = tensor<int32, [2]>([1, 1])];
        tensor<int32, [4]> pd = const()[name = string("pd"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        int32 gr = const()[name = string("gr"), val = int32(1)];
        tensor<fp16, [1, 24, 1, 8]> y = conv(x = x, weight = W, strides = st, pad_type = pt, pad = pd, dilations = st, groups = gr)[name = string("y")];
        tensor<fp16, [1, 24, 1, 8]> s = sigmoid(x = y)[name = string("s")];
        tensor<fp16, [1, 24, 1, 8]> z = mul(x = s, y = g)[name = string("z")];
    }} -> (z);
}}
"""
    kernel = anetrain.kernels.compile(text, weights={"@model_path/weights/w.bin": blob}, backend="ref")
    x = rng.standard_normal((1, 16, 1, 8)).astype(np.float16)
    z = kernel(x)
    Wh, gh = W.astype(np.float16).astype(np.float64), gamma.astype(np.float16).astype(np.float64)
    ref = 1 / (1 + np.exp(-np.einsum("oi,is->os", Wh, x[0, :, 0, :].astype(np.float64)))) * gh[:, None]
    assert z.dtype == np.float16 and z.shape == (1, 24, 1, 8)
    np.testing.assert_allclose(z[0, :, 0, :].astype(np.float64), ref, rtol=4e-3, atol=2e-3)


@pytest.mark.parametrize("dialect", ["1.3/ios18", "1.5/ios17", "1.0/ios16-verbose"])
def test_builder_text_parses_in_every_dialect(dialect, rng):
    b = Builder(dialect)
    x = b.input("x", "fp16", [1, 4, 1, 8])
    w = b.weight("W", "fp16", [2, 4, 1, 1], "@model_path/weights/w.bin", 64)
    y = b.op("y", "fp16", [1, 2, 1, 8], "conv", x=x, weight=w, strides=ints([1, 1]), pad_type=string("valid"),
             pad=ints([0, 0, 0, 0]), dilations=ints([1, 1]), groups=int32(1))
    z = b.op("z", "fp16", [1, 4, 1, 8], "concat", values=[y, y], axis=int32(1), interleave=boolean(False))
    b.output(z)
    text = b.text()
    summary = _native.mil_parse_summary(text)
    version, opset = dialect.split("/")
    assert summary["version"] == version and summary["opset"] == opset.replace("-verbose", "")
    assert _native.mil_canonical(_native.mil_canonical(text)) == _native.mil_canonical(text)
    W = rng.standard_normal((2, 4)).astype(np.float16)
    blob, _ = pack_weights([W])
    out = anetrain.kernels.compile(text, {"@model_path/weights/w.bin": blob})(np.ones((1, 4, 1, 8), np.float16))
    expect = W.astype(np.float32).sum(axis=1)
    np.testing.assert_allclose(out[0, :2, 0, 0], expect, rtol=2e-3)
    np.testing.assert_allclose(out[0, 2:, 0, :], out[0, :2, 0, :])
