"""The ANE rule checker (anetrain.ane.check_program, docs/ane-rules.md) and the probe record.

Every program here is written out by hand; each violating variant changes one thing of a
program that conforms, and the expected rule id and line are read off the text itself.
"""
import json
import re

import numpy as np
import pytest

from anetrain import ane, kernels
from anetrain.ane_programs import BUILTIN, Mil, blob_file

FAMILIES = ["M1", "M2", "M3", "M4", "M5"]
TRAINED_OPS = {"const", "reshape", "transpose", "slice_by_size", "matmul", "mul", "add", "sub", "concat", "softmax",
               "sigmoid", "reduce_sum", "conv", "pow"}

# The shape of the programs known to train: one fp16 [1, C, 1, W] input, slices, reshapes,
# matmul, softmax with a BLOBFILE mask, results concatenated on the channel axis into one output.
GOOD = """program(1.3)
[buildInfo = dict<string, string>({{"coremlc-version", "3505.4.1"}})]
{
    func main<ios18>(tensor<fp16, [1, 128, 1, 32]> x) {
        tensor<int32, [4]> qb = const()[name = string("qb"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        tensor<int32, [4]> kb = const()[name = string("kb"), val = tensor<int32, [4]>([0, 64, 0, 0])];
        tensor<int32, [4]> sz = const()[name = string("sz"), val = tensor<int32, [4]>([1, 64, 1, 32])];
        tensor<int32, [4]> hs = const()[name = string("hs"), val = tensor<int32, [4]>([1, 2, 32, 32])];
        tensor<int32, [4]> pm = const()[name = string("pm"), val = tensor<int32, [4]>([0, 1, 3, 2])];
        tensor<int32, [4]> fl = const()[name = string("fl"), val = tensor<int32, [4]>([1, 64, 1, 32])];
        bool no = const()[name = string("no"), val = bool(false)];
        bool yes = const()[name = string("yes"), val = bool(true)];
        fp16 sc = const()[name = string("sc"), val = fp16(0.17676)];
        int32 ax = const()[name = string("ax"), val = int32(-1)];
        int32 ch = const()[name = string("ch"), val = int32(1)];
        tensor<fp16, [1, 1, 32, 32]> mask = const()[name = string("mask"), val = tensor<fp16, [1, 1, 32, 32]>(BLOBFILE(path = string("@model_path/weights/mask.bin"), offset = uint64(64)))];
        tensor<fp16, [1, 64, 1, 32]> q = slice_by_size(x = x, begin = qb, size = sz)[name = string("q")];
        tensor<fp16, [1, 64, 1, 32]> k = slice_by_size(x = x, begin = kb, size = sz)[name = string("k")];
        tensor<fp16, [1, 2, 32, 32]> q4 = reshape(shape = hs, x = q)[name = string("q4")];
        tensor<fp16, [1, 2, 32, 32]> k4 = reshape(shape = hs, x = k)[name = string("k4")];
        tensor<fp16, [1, 2, 32, 32]> qh = transpose(perm = pm, x = q4)[name = string("qh")];
        tensor<fp16, [1, 2, 32, 32]> kh = transpose(perm = pm, x = k4)[name = string("kh")];
        tensor<fp16, [1, 2, 32, 32]> s = matmul(transpose_x = no, transpose_y = yes, x = qh, y = kh)[name = string("s")];
        tensor<fp16, [1, 2, 32, 32]> s2 = mul(x = s, y = sc)[name = string("s2")];
        tensor<fp16, [1, 2, 32, 32]> s3 = add(x = s2, y = mask)[name = string("s3")];
        tensor<fp16, [1, 2, 32, 32]> p = softmax(axis = ax, x = s3)[name = string("p")];
        tensor<fp16, [1, 64, 1, 32]> pf = reshape(shape = fl, x = p)[name = string("pf")];
        tensor<fp16, [1, 128, 1, 32]> y = concat(axis = ch, interleave = no, values = (pf, q))[name = string("y")];
    } -> (y);
}
"""
FUNC_LINE = 4


def line_of(text, fragment):
    """1-based number of the only line holding `fragment`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(hits) == 1, (fragment, hits)
    return hits[0]


def insert_after(text, fragment, statement):
    """`statement` as a new body line after the line holding `fragment`."""
    lines = text.splitlines()
    at = line_of(text, fragment)
    return "\n".join(lines[:at] + ["        " + statement] + lines[at:]) + "\n"


def verbose(text):
    """The program in the verbose program(1.0)/ios16 spelling: every scalar a rank-0 tensor."""
    text = text.replace("program(1.3)", "program(1.0)").replace("main<ios18>", "main<ios16>")
    text = text.replace("dict<string, string>", "dict<tensor<string, []>, tensor<string, []>>")
    text = re.sub(r"\b(string|bool|int32|fp16|uint64)\(", r"tensor<\1, []>(", text)
    return re.sub(r"^(\s+)(bool|fp16|int32) ", r"\1tensor<\2, []> ", text, flags=re.M)


def rule_lines(problems):
    """(line, rule id) of each reported problem; line 0 when none is named."""
    out = []
    for p in problems:
        m = re.match(r"(?:line (\d+): )?([a-z-]+): ", p)
        assert m, p
        out.append((int(m.group(1) or 0), m.group(2)))
    return out


def test_the_conforming_program_runs_on_ref(rng):
    mask = np.where(np.tril(np.ones((32, 32), bool)), 0.0, -65504.0)
    k = kernels.compile(GOOD, {"@model_path/weights/mask.bin": blob_file(mask)}, backend="ref", name="good")
    y = np.asarray(k(rng.standard_normal((1, 128, 1, 32)).astype(np.float16)), np.float32)
    assert y.shape == (1, 128, 1, 32) and np.all(np.isfinite(y))


@pytest.mark.parametrize("chip", FAMILIES + [None])
def test_the_conforming_program_passes(chip):
    assert ane.check_program(GOOD, chip=chip, multi_io=False) == []


def test_function_must_be_main():
    text = GOOD.replace("func main<ios18>", "func body<ios18>")
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(FUNC_LINE, "function")]


def test_two_inputs():
    text = GOOD.replace("> x) {", "> x, tensor<fp16, [1, 64, 1, 32]> z) {")
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(FUNC_LINE, "io-count")]
    assert ane.check_program(text, multi_io=True) == []


def test_two_outputs():
    text = GOOD.replace("} -> (y);", "} -> (y, q);")
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(line_of(text, "} -> (y, q);"), "io-count")]
    assert ane.check_program(text, multi_io=True) == []


def test_input_not_channel_major():
    text = GOOD.replace("tensor<fp16, [1, 128, 1, 32]> x)", "tensor<fp16, [1, 64, 2, 32]> x)")
    assert ane.check_program(text, multi_io=False) == [
        "line 4: io-shape: input 'x' is tensor<fp16, [1, 64, 2, 32]>, not tensor<fp16, [1, C, 1, W]>"]


def test_fp32_output():
    text = GOOD.replace("tensor<fp16, [1, 128, 1, 32]> y =", "tensor<fp32, [1, 128, 1, 32]> y =")
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(line_of(text, "} -> (y);"), "io-shape")]


def test_width_not_a_multiple_of_32():
    text = GOOD.replace("tensor<fp16, [1, 128, 1, 32]> x)", "tensor<fp16, [1, 128, 1, 30]> x)")
    problems = ane.check_program(text, multi_io=False)
    assert rule_lines(problems) == [(FUNC_LINE, "io-row")]
    assert "60 bytes" in problems[0]


def test_op_outside_the_trained_set():
    text = insert_after(GOOD, "s3 = add(", 'tensor<fp16, [1, 2, 32, 32]> r = relu(x = s3)[name = string("r")];')
    text = text.replace("softmax(axis = ax, x = s3)", "softmax(axis = ax, x = r)")
    for chip in FAMILIES + [None]:
        problems = ane.check_program(text, chip=chip, multi_io=False)
        assert rule_lines(problems) == [(line_of(text, "relu("), "op")]
        assert "'relu'" in problems[0]


# A reshape of q to a rank-3 value and to a batch of 2: the int32 shape consts are exempt, the
# fp16 values are not.
@pytest.mark.parametrize("shape", [[64, 1, 32], [2, 32, 1, 32]])
def test_fp16_value_not_rank4_batch1(shape):
    dims = ", ".join(map(str, shape))
    text = insert_after(GOOD, 'string("fl")', f'tensor<int32, [{len(shape)}]> odd = const()[name = string("odd"), '
                                              f'val = tensor<int32, [{len(shape)}]>([{dims}])];')
    text = insert_after(text, 'string("q")];', f'tensor<fp16, [{dims}]> qo = reshape(shape = odd, x = q)'
                                               '[name = string("qo")];')
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(line_of(text, "qo = reshape"), "rank")]


def test_blobfile_constant_of_rank3():
    text = GOOD.replace("tensor<fp16, [1, 1, 32, 32]>", "tensor<fp16, [1, 32, 32]>")
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(line_of(text, "mask = const()"), "rank")]


def test_conv_weight_keeps_rank4_without_a_leading_1():
    text = insert_after(GOOD, 'string("ch")', 'tensor<fp16, [64, 64, 1, 1]> W = const()[name = string("W"), '
                                              'val = tensor<fp16, [64, 64, 1, 1]>(BLOBFILE(path = string('
                                              '"@model_path/weights/w.bin"), offset = uint64(64)))];')
    conv = ('tensor<fp16, [1, 64, 1, 32]> qc = conv(x = q, weight = W, strides = st, pad_type = pt, pad = pd, '
            'dilations = st, groups = ch)[name = string("qc")];')
    text = insert_after(text, 'string("q")];', conv)
    text = insert_after(text, 'string("ch")', 'tensor<int32, [2]> st = const()[name = string("st"), '
                                              'val = tensor<int32, [2]>([1, 1])];')
    text = insert_after(text, 'string("ch")', 'tensor<int32, [4]> pd = const()[name = string("pd"), '
                                              'val = tensor<int32, [4]>([0, 0, 0, 0])];')
    text = insert_after(text, 'string("ch")', 'string pt = const()[name = string("pt"), val = string("valid")];')
    assert ane.check_program(text, multi_io=False) == []
    # a [64, 64, 1, 1] constant that is no conv's weight is a batch of 64
    text = text.replace("weight = W,", "weight = W2,").replace("tensor<fp16, [64, 64, 1, 1]> W =", "tensor<fp16, [64, 64, 1, 1]> W2 =")
    text = insert_after(text, 'string("ch")', 'tensor<fp16, [64, 64, 1, 1]> V = const()[name = string("V"), '
                                              'val = tensor<fp16, [64, 64, 1, 1]>(BLOBFILE(path = string('
                                              '"@model_path/weights/v.bin"), offset = uint64(64)))];')
    assert rule_lines(ane.check_program(text, multi_io=False)) == [(line_of(text, "V = const()"), "rank")]


def test_verbose_dialect_only_where_the_table_has_it():
    text = verbose(GOOD)
    assert 'tensor<string, []>("q")' in text and "tensor<fp16, []> sc" in text
    for chip in ("M1", "M2"):
        assert ane.check_program(text, chip=chip, multi_io=False) == []
    for chip in ("M3", "M4", "M5", None):
        problems = ane.check_program(text, chip=chip, multi_io=False)
        assert rule_lines(problems) == [(FUNC_LINE, "dialect")]
        assert "1.0/ios16-verbose" in problems[0]


@pytest.mark.parametrize("chip", FAMILIES + [None])
def test_program_version_1_5_is_rejected(chip):
    text = GOOD.replace("program(1.3)", "program(1.5)")
    assert rule_lines(ane.check_program(text, chip=chip, multi_io=False)) == [(FUNC_LINE, "dialect")]


@pytest.mark.parametrize("spelling", ["1.7676e-01", "1.5E+3", "17676e-5"])
def test_exponent_notation_is_flagged(spelling):
    text = GOOD.replace("fp16(0.17676)", f"fp16({spelling})")
    problems = ane.check_program(text, multi_io=False)
    assert rule_lines(problems) == [(line_of(text, 'string("sc")'), "literal")]
    assert spelling in problems[0]


def test_identifiers_strings_and_hex_floats_are_not_exponents():
    text = re.sub(r"\bsc\b", "de5", GOOD).replace("fp16(0.17676)", "fp16(0x1.6ep-3)")
    text = re.sub(r"\bk4\b", "x1e5", text)
    text = text.replace('"3505.4.1"', '"1e-05"')
    assert "de5 = const()" in text and "x1e5 = reshape" in text
    assert ane.check_program(text, multi_io=False) == []


def test_unparseable_text_gives_one_parse_line():
    problems = ane.check_program(GOOD.replace("} -> (y);", "} -> (nothing);"), multi_io=False)
    assert len(problems) == 1 and problems[0].startswith("parse: ") and "nothing" in problems[0]
    assert ane.check_program("not a program", multi_io=False)[0].startswith("parse: ")


def test_several_problems_are_all_reported():
    text = GOOD.replace("tensor<fp16, [1, 128, 1, 32]> x)", "tensor<fp16, [1, 128, 1, 30]> x)")
    text = text.replace("fp16(0.17676)", "fp16(1.7676e-1)").replace("program(1.3)", "program(1.5)")
    assert sorted(rule_lines(ane.check_program(text, multi_io=False))) == sorted(
        [(FUNC_LINE, "io-row"), (FUNC_LINE, "dialect"), (line_of(text, 'string("sc")'), "literal")])


def test_rules_per_family():
    for chip in FAMILIES:
        r = ane.rules(chip)
        assert r["family"] == chip and set(r["ops"]) == TRAINED_OPS
        assert r["dialects"] == (["1.3/ios18", "1.0/ios16-verbose"] if chip in ("M1", "M2") else ["1.3/ios18"])
    assert ane.rules()["dialects"] == ["1.3/ios18"] and set(ane.rules()["ops"]) == TRAINED_OPS
    with pytest.raises(ValueError, match="unknown chip family 'M9'"):
        ane.rules("M9")
    with pytest.raises(ValueError, match="unknown chip family"):
        ane.check_program(GOOD, chip="A17")


@pytest.mark.parametrize("dialect", ["1.3/ios18", "1.0/ios16-verbose"])
def test_builtin_programs_conform(rng, dialect):
    version, opset = dialect.split("/")
    m = Mil({"version": version, "opset": opset.replace("-verbose", ""), "verbose_scalars": opset.endswith("-verbose")})
    chips = FAMILIES + [None] if dialect == "1.3/ios18" else ["M1", "M2"]
    for name, build in BUILTIN.items():
        text, _, _ = build(m, rng)
        for chip in chips:
            assert ane.check_program(text, chip=chip, multi_io=False) == [], (name, chip)


# ------------------------------------------------------------------ the probe record

@pytest.fixture
def record_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "ane_probe.json"
    monkeypatch.setenv("ANETRAIN_PROBE_RECORD", str(path))
    return path


def test_probe_record_round_trips(record_file):
    assert ane.probe_record_path() == str(record_file)
    assert ane.probe_record() == {}
    assert ane.record_probe("M4", multi_io=True, macos="26.3") == str(record_file)
    ane.record_probe("M1", multi_io=False, macos="15.0", date="2026-01-02")
    ane.record_probe("M4", macos="26.4")  # merges into what is there
    record = json.loads(record_file.read_text())
    assert record == ane.probe_record()
    assert record["M1"] == {"multi_io": False, "macos": "15.0", "date": "2026-01-02"}
    assert record["M4"]["multi_io"] is True and record["M4"]["macos"] == "26.4"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["M4"]["date"])


def test_broken_probe_record_says_where(record_file):
    record_file.parent.mkdir()
    record_file.write_text("[1, 2")
    with pytest.raises(ValueError, match="probe record .*ane_probe.json"):
        ane.probe_record()


def test_check_program_reads_multi_io_from_the_probe_record(record_file):
    two = GOOD.replace("> x) {", "> x, tensor<fp16, [1, 64, 1, 32]> z) {")
    assert rule_lines(ane.check_program(two, chip="M4")) == [(FUNC_LINE, "io-count")]
    ane.record_probe("M4", multi_io=True, macos="26.3")
    assert ane.check_program(two, chip="M4") == []
    assert rule_lines(ane.check_program(two, chip="M3")) == [(FUNC_LINE, "io-count")]
    # any chip: only when every family has recorded success
    assert rule_lines(ane.check_program(two)) == [(FUNC_LINE, "io-count")]
    for chip in FAMILIES:
        ane.record_probe(chip, multi_io=True, macos="26.3")
    assert ane.check_program(two) == []
    # an explicit argument wins over the record
    assert rule_lines(ane.check_program(two, chip="M4", multi_io=False)) == [(FUNC_LINE, "io-count")]
