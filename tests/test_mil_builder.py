"""The MIL text builder: program header, statement syntax, const declaration, dialects."""
import re

import pytest

import numpy as np

from anetrain import _native
from anetrain.mil import Builder, boolean, fp16, fp32, int32, ints, string


def _conv_program(dialect="1.3/ios18"):
    b = Builder(dialect)
    x = b.input("x", "fp16", [1, 4, 1, 8])
    w = b.weight("W", "fp16", [2, 4, 1, 1], "@model_path/weights/w.bin", 64)
    y = b.op("y", "fp16", [1, 2, 1, 8], "conv", x=x, weight=w, strides=ints([1, 1]), pad_type=string("valid"),
             pad=ints([0, 0, 0, 0]), dilations=ints([1, 1]), groups=int32(1))
    z = b.op("z", "fp16", [1, 4, 1, 8], "concat", values=[y, y], axis=int32(1), interleave=boolean(False))
    s = b.op("s", "fp16", [1, 4, 1, 8], "mul", x=z, y=fp16(0.1))
    b.output(s)
    b.output(y)
    return b.text()


def test_default_dialect_text():
    t = _conv_program()
    lines = t.splitlines()
    assert lines[0] == "program(1.3)"
    assert lines[1].startswith("[buildInfo = dict<string, string>({{")
    assert lines[2] == "{"
    assert lines[3] == "    func main<ios18>(tensor<fp16, [1, 4, 1, 8]> x) {"
    assert lines[-2] == "    } -> (s, y);" and lines[-1] == "}"
    assert ('tensor<fp16, [2, 4, 1, 1]> W = const()[name = string("W"), val = tensor<fp16, [2, 4, 1, 1]>'
            '(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];') in t
    assert "int32 c_int_1 = const()[name = string(\"c_int_1\"), val = int32(1)];" in t
    # the same constant is declared once and reused
    assert t.count("val = tensor<int32, [2]>([1, 1])") == 1
    assert re.search(r"dilations = y_strides", t)
    assert "values = (y, y)" in t
    # fp16 literals hold the value the program computes with (0.1 rounded to half)
    assert "val = fp16(0.099975586)" in t
    for line in lines[4:-2]:
        assert line.startswith("        ") and line.endswith(";")
        assert "[name = string(" in line


def test_verbose_dialect_spells_every_scalar_as_rank0_tensor():
    t = _conv_program("1.0/ios16-verbose")
    assert t.startswith("program(1.0)\n[buildInfo = dict<tensor<string, []>, tensor<string, []>>(")
    assert "func main<ios16>(" in t
    assert 'string("' not in t and "uint64(64)" not in t
    assert 'tensor<string, []>("valid")' in t
    assert "tensor<uint64, []>(64)" in t
    assert "tensor<int32, []> c_int_1 = const()[name = tensor<string, []>(\"c_int_1\")" in t


@pytest.mark.parametrize("bad", ["1.3", "x/ios18", "1.3/metal", "/ios18"])
def test_bad_dialect(bad):
    with pytest.raises(ValueError, match="dialect"):
        Builder(bad)


def test_builder_errors():
    b = Builder()
    x = b.input("x", "fp16", [1, 2])
    with pytest.raises(ValueError, match="twice"):
        b.input("x", "fp16", [1, 2])
    with pytest.raises(ValueError, match="not defined"):
        b.op("y", "fp16", [1, 2], "add", x=x, y="nope")
    with pytest.raises(ValueError, match="letters"):
        b.input("a b", "fp16", [1])
    with pytest.raises(ValueError, match="no outputs"):
        b.text()
    with pytest.raises(ValueError, match="values"):
        b.constant("c", "fp16", [2, 2], [1, 2, 3])


# fp16 literals hold the half value itself (1e-5 rounds to 1.001358e-05), in the shortest float text.
@pytest.mark.parametrize("dtype, value, spelled", [("fp16", 1e-5, "0.00001001358"), ("fp16", 65504.0, "65504"),
                                                   ("fp32", 1e-5, "0.00001"), ("fp32", 1e-7, "0.0000001"), ("fp32", 65504.0, "65504"),
                                                   ("fp32", -3.25e-6, "-0.00000325")])
def test_floats_are_written_in_plain_decimal_and_read_back_exactly(dtype, value, spelled):
    make, cast = {"fp16": (fp16, np.float16), "fp32": (fp32, np.float32)}[dtype]
    b = Builder()
    x = b.input("x", dtype, [1, 64, 1, 32])
    b.output(b.op("y", dtype, [1, 64, 1, 32], "mul", x=x, y=make(value)))
    text = b.text()
    literal = re.search(rf"val = {dtype}\(([^)]*)\)", text).group(1)
    assert literal == spelled
    assert cast(float(literal)) == cast(value)
    # the ref parser reads the same value back (its canonical text holds the parsed number)
    again = re.search(rf"val = {dtype}\(([^)]*)\)", _native.mil_canonical(text)).group(1)
    assert "e" not in again.lower() and cast(float(again)) == cast(value)
