"""MIL text parser: both spellings of every construct, canonical printing round trips, and
errors that name the line."""
import numpy as np
import pytest

import anetrain
from anetrain import _native as N

from _milkit import run

SHORTHAND = """program(1.3)
[buildInfo = dict<string, string>({{"coremlc-component-MIL", "3510.2.1"}, {"coremltools-version", "9.0"}})]
{
    func main<ios18>(tensor<fp16, [1, 4, 1, 8]> x, tensor<fp32, [2]> v) {
        string pt = const()[name = string("pt"), val = string("valid")];
        int32 ax = const()[name = string("ax"), val = int32(-1)];
        bool kd = const()[name = string("kd"), val = bool(true)];
        fp16 sc = const()[name = string("sc"), val = fp16(0x1p-3)];
        fp32 eps = const()[name = string("eps"), val = fp32(1e-5)];
        uint64 off = const()[name = string("off"), val = uint64(64)];
        tensor<int32, [4]> pm = const()[name = string("pm"), val = tensor<int32, [4]>([0, 1, 3, 2])];
        tensor<fp16, [2, 2]> m = const()[name = string("m"), val = tensor<fp16, [2, 2]>([[0, -inf], [inf, nan]])];
        tensor<fp16, [1, 4, 1, 8]> y = mul(x = x, y = sc)[name = string("y")];
        tensor<fp16, [1, 4, 1, 4]> a, tensor<fp16, [1, 4, 1, 4]> b = split(x = y, axis = ax, num_splits = int32(2))[name = string("s")];
    } -> (a, b);
}
"""

VERBOSE = """program(1.0)
[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{"coremlc-version", "1436.100.10"}})]
{
    func main<ios16>(tensor<fp16, [1, 10]> x, tensor<fp16, [1, 10]> y) {
        tensor<fp16, []> s = const()[name = tensor<string, []>("s"), val = tensor<fp16, []>(0.5)];
        tensor<fp16, [1, 10]> var_3 = mul(x = x, y = y)[name = tensor<string, []>("op_3_cast_fp16")];
        tensor<fp16, [1, 10]> z = mul(x = var_3, y = s)[name = tensor<string, []>("z")];
    } -> (z);
}
"""


def test_shorthand_program_summary():
    s = N.mil_parse_summary(SHORTHAND)
    assert s["version"] == "1.3" and s["opset"] == "ios18"
    assert s["inputs"] == [("x", "fp16", (1, 4, 1, 8)), ("v", "fp32", (2,))]
    assert s["outputs"] == [("a", "fp16", (1, 4, 1, 4)), ("b", "fp16", (1, 4, 1, 4))]
    assert s["ops"] == ["const"] * 8 + ["mul", "split"]
    assert s["build_info"] == [("coremlc-component-MIL", "3510.2.1"), ("coremltools-version", "9.0")]


def test_verbose_program_runs_like_shorthand(rng):
    x = rng.standard_normal((1, 10)).astype(np.float16)
    y = rng.standard_normal((1, 10)).astype(np.float16)
    short = VERBOSE.replace("tensor<string, []>(", "string(").replace("tensor<fp16, []>(0.5)", "fp16(0.5)")
    np.testing.assert_array_equal(run(VERBOSE, x, y), run(short, x, y))
    want = (((x.astype(np.float32) * y).astype(np.float16)).astype(np.float32) * 0.5).astype(np.float16)
    np.testing.assert_array_equal(run(VERBOSE, x, y), want)


@pytest.mark.parametrize("text", [SHORTHAND, VERBOSE])
def test_canonical_round_trip_is_stable(text):
    once = N.mil_canonical(text)
    assert N.mil_canonical(once) == once
    assert N.mil_parse_summary(once) == {**N.mil_parse_summary(text), "build_info": N.mil_parse_summary(text)["build_info"]}


def test_canonical_spells_values_exactly():
    c = N.mil_canonical(SHORTHAND)
    assert "fp16(0.125)" in c
    assert "tensor<fp16, [2, 2]>([0.0, -inf, inf, nan])" in c
    assert "fp32(0.00001)" in c  # plain decimal, as the ANE's known-good programs spell it
    assert "int32(-1)" in c and "uint64(64)" in c and "bool(true)" in c


def test_free_form_whitespace_and_comments():
    text = ("program(1.3) // header\n{func main<ios18>(tensor<fp16,[2]>x){\n// a comment line\n"
            "tensor<fp16,[2]>y=relu(x=x)[name=string(\"y\")];}->(y);}")
    assert N.mil_parse_summary(text)["ops"] == ["relu"]
    np.testing.assert_array_equal(run(text, np.array([-1, 2], np.float16)), np.array([0, 2], np.float16))


def test_multiple_functions_and_blobfile_literal():
    text = """program(1.3) {
      func helper<ios18>(tensor<fp16, [2]> x) { tensor<fp16, [2]> y = relu(x = x)[name = string("y")]; } -> (y);
      func main<ios18>(tensor<fp16, [2]> x) {
        tensor<fp16, [2, 1]> W = const()[name = string("W"), val = tensor<fp16, [2, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];
        tensor<fp16, [2]> y = relu(x = x)[name = string("y")];
      } -> (y);
    }"""
    s = N.mil_parse_summary(text)
    assert s["functions"] == 2 and s["ops"] == ["const", "relu"]
    assert 'BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64))' in N.mil_canonical(text)


def test_huge_declared_shape_does_not_allocate():
    text = ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [1099511627776, 65536]> x) {\n"
            "  tensor<fp16, [1099511627776, 65536]> y = relu(x = x)[name = string(\"y\")];\n } -> (y);\n}\n")
    with pytest.raises(anetrain.MilError) as e:
        N.mil_parse_summary(text)
    assert e.value.line == 3 and "too many elements" in str(e.value)
    ok = text.replace("1099511627776, 65536", "1099511627776")  # parses; the backend refuses to allocate
    assert N.mil_parse_summary(ok)["inputs"][0][2] == (1099511627776,)
    with pytest.raises(anetrain.MilError, match="exceeds the ref backend's limit"):
        anetrain.kernels.compile(ok, backend=anetrain.kernels.new_backend("ref"))


BAD = [
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  tensor<fp16, [2]> y = relu(x = q)[name = string(\"y\")];\n } -> (y);\n}\n",
     4, "'q' is used before it is defined"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  tensor<fp16, [2]> x = relu(x = x)[name = string(\"y\")];\n } -> (x);\n}\n",
     4, "'x' is defined twice"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  tensor<fp16, [2]> y = relu(x = x)[name = string(\"y\")];\n } -> (z);\n}\n",
     5, "returned name 'z' is not defined"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  tensor<int32, [3]> c = const()[name = string(\"c\"), val = tensor<int32, [3]>([1, 2])];\n } -> (c);\n}\n",
     4, "has 2 element(s) but its shape needs 3"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp17, [2]> x) {\n } -> (x);\n}\n", 3, "unknown dtype 'fp17'"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  string s = const()[name = string(\"s), val = string(\"v\")];\n } -> (x);\n}\n",
     4, "string literal runs past the end of the line"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  tensor<fp16, [2]> y = relu(x = x)[name = string(\"y\")]\n } -> (y);\n}\n",
     5, "expected ';'"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  int8 c = const()[name = string(\"c\"), val = int8(300)];\n } -> (c);\n}\n",
     4, "does not fit int8"),
    ("program(13)\n{\n}\n", 1, "not of the form MAJOR.MINOR"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n } -> (x);\n} extra\n", 5, "after the end of the program"),
    ("program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x) {\n  tensor<fp16, [2]> y = relu(x = x, x = x)[name = string(\"y\")];\n } -> (y);\n}\n",
     4, "argument 'x' is given twice"),
]


@pytest.mark.parametrize("text,line,problem", BAD)
def test_errors_name_the_line(text, line, problem):
    with pytest.raises(anetrain.MilError) as e:
        N.mil_parse_summary(text)
    assert e.value.line == line
    assert problem in e.value.problem
    assert str(e.value).startswith(f"MIL line {line}: ")
    assert isinstance(e.value, ValueError)


def test_deep_nesting_is_an_error_not_a_crash():
    deep = "(" * 100000
    text = f"program(1.3)\n{{\n func main<ios18>(tensor<fp16, [2]> x) {{\n  tensor<fp16, [2]> y = concat(values = {deep}"
    with pytest.raises(anetrain.MilError, match="nested too deeply"):
        N.mil_parse_summary(text)
    lit = "[" * 100000
    text = f"program(1.3)\n{{\n func main<ios18>() {{\n  tensor<fp16, [2]> y = const()[val = tensor<fp16, [2]>({lit}"
    with pytest.raises(anetrain.MilError, match="nested too deeply"):
        N.mil_parse_summary(text)


def test_no_main_function():
    text = "program(1.3)\n{\n func other<ios18>(tensor<fp16, [2]> x) {\n } -> (x);\n}\n"
    with pytest.raises(anetrain.MilError, match="no function named 'main'"):
        N.mil_parse_summary(text)
