"""The ANE backend's portable parts (all platforms) and, on a Mac with an ANE, the backend itself."""
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import anetrain
from anetrain import _native, ane, backends
from anetrain.ane_programs import Mil, doubled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_no_ane = pytest.mark.skipif(not _native.ane_available(),
                             reason=f"needs a Mac with an Apple Neural Engine: {_native.ane_unavailable_reason()}")


def needs_ane(test):
    """Runs only on a Mac with an ANE; `pytest -m ane` selects these."""
    return pytest.mark.ane(_no_ane(test))
off_mac = pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")
ANE_ENV = ["ANETRAIN_BACKEND", "ANETRAIN_STRICT", "ANETRAIN_MIL_DIALECT", "ANETRAIN_ANE_COMPILE_BUDGET",
           "ANETRAIN_ANE_QOS", "ANETRAIN_ANE_MULTI_INPUT"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ANE_ENV:
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------ availability (off macOS)

@off_mac
def test_unavailable_off_macos_says_why():
    assert ane.available() is False
    assert "macOS" in ane.unavailable_reason()
    assert anetrain.available_backends() == ["ref"]
    assert ane.chip() == {"brand": "", "model": "", "ane_subtype": "", "family": ""}


@off_mac
def test_ane_backend_off_macos_is_a_backend_error_saying_why():
    from anetrain import kernels

    with pytest.raises(anetrain.BackendError, match="ANE backend is unavailable: .*macOS"):
        _native.make_ane_backend()
    with pytest.raises(anetrain.BackendError, match="unavailable"):
        kernels.new_backend("ane")
    with pytest.raises(anetrain.BackendError, match="unavailable"):
        backends.new_backend("ane", qos=9)
    assert not hasattr(_native, "ane_kernel_reload")  # the probes' kernel hooks exist on macOS only
    assert _native.ane_process_compiles() == 0


# ------------------------------------------------------------------ dialect table

# Every family starts with program(1.3)/ios18, the spelling of every program known to train
# (the public static pipeline trained on M1 Pro/Max with it); M1/M2 list the verbose one second.
@pytest.mark.parametrize("brand, expected", [
    ("Apple M1", ("1.3", "ios18", False)),
    ("Apple M1 Pro", ("1.3", "ios18", False)),
    ("Apple M2 Max", ("1.3", "ios18", False)),
    ("Apple M3 Ultra", ("1.3", "ios18", False)),
    ("Apple M4", ("1.3", "ios18", False)),
    ("Apple M5", ("1.3", "ios18", False)),
])
def test_dialect_table_by_chip(brand, expected):
    d = _native.ane_dialect_for(brand)
    assert (d["version"], d["opset"], d["verbose_scalars"]) == expected
    assert d["source"] == "detected"


@pytest.mark.parametrize("brand", ["", "Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz", "Apple M", "Apple M12"])
def test_dialect_default_for_unknown_chips(brand):
    d = _native.ane_dialect_for(brand)
    assert (d["version"], d["opset"], d["verbose_scalars"], d["source"]) == ("1.3", "ios18", False, "default")


@pytest.mark.parametrize("spec, expected", [
    ("1.3/ios18", ("1.3", "ios18", False)),
    ("1.5/ios17", ("1.5", "ios17", False)),
    ("1.0/ios16-verbose", ("1.0", "ios16", True)),
])
def test_dialect_override_wins_over_the_table(spec, expected):
    d = _native.ane_dialect_for("Apple M1", spec)
    assert (d["version"], d["opset"], d["verbose_scalars"], d["source"]) == expected + ("env",)


def test_dialect_env_override(monkeypatch):
    monkeypatch.setenv("ANETRAIN_MIL_DIALECT", "1.0/ios16-verbose")
    assert ane.dialect() == {"version": "1.0", "opset": "ios16", "verbose_scalars": True, "source": "env"}


@pytest.mark.parametrize("bad", ["ios18", "1.3", "1.3/", "/ios18", "x.y/ios18", "1.3/macos15"])
def test_bad_dialect_override_is_one_clear_error(monkeypatch, bad):
    monkeypatch.setenv("ANETRAIN_MIL_DIALECT", bad)
    with pytest.raises(ValueError, match=f"ANETRAIN_MIL_DIALECT: MIL dialect '{re.escape(bad)}'"):
        ane.dialect()


def test_dialect_string_is_what_the_builder_takes(monkeypatch):
    monkeypatch.setenv("ANETRAIN_MIL_DIALECT", "1.0/ios16-verbose")
    assert ane.dialect_string() == "1.0/ios16-verbose"
    assert _native.MilBuilder(ane.dialect_string()).dialect == "1.0/ios16-verbose"


# ------------------------------------------------------------------ settings

def test_default_options():
    assert ane.options() == {"compile_budget": 100, "qos": 21, "multi_input": False, "strict": False}


def test_options_from_env(monkeypatch):
    monkeypatch.setenv("ANETRAIN_ANE_COMPILE_BUDGET", "40")
    monkeypatch.setenv("ANETRAIN_ANE_QOS", "0")
    monkeypatch.setenv("ANETRAIN_ANE_MULTI_INPUT", "1")
    monkeypatch.setenv("ANETRAIN_STRICT", "1")
    assert ane.options() == {"compile_budget": 40, "qos": 0, "multi_input": True, "strict": True}
    monkeypatch.setenv("ANETRAIN_ANE_COMPILE_BUDGET", "-1")
    assert ane.options()["compile_budget"] == -1


@pytest.mark.parametrize("var, value", [
    ("ANETRAIN_ANE_COMPILE_BUDGET", "lots"), ("ANETRAIN_ANE_COMPILE_BUDGET", "-2"),
    ("ANETRAIN_ANE_COMPILE_BUDGET", "12x"), ("ANETRAIN_ANE_QOS", "64"), ("ANETRAIN_ANE_QOS", "-1"),
    ("ANETRAIN_ANE_MULTI_INPUT", "maybe"), ("ANETRAIN_STRICT", "2"),
])
def test_bad_settings_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        ane.options()


def test_strict_mode_argument_beats_env(monkeypatch):
    monkeypatch.setenv("ANETRAIN_STRICT", "1")
    assert ane.strict_mode() is True
    assert ane.strict_mode(False) is False


# ------------------------------------------------------------------ backend resolution

@off_mac
def test_resolution_without_an_ane(monkeypatch):
    assert ane.resolve_backend_name("auto") == "ref"
    assert ane.resolve_backend_name(None) == "ref"
    assert ane.resolve_backend_name("ref") == "ref"
    with pytest.raises(ValueError, match="'ane' is not usable here .*macOS.*use 'ref' or 'auto'"):
        ane.resolve_backend_name("ane")
    monkeypatch.setenv("ANETRAIN_BACKEND", "ane")
    with pytest.raises(ValueError, match="ANETRAIN_BACKEND 'ane' is not usable here"):
        ane.resolve_backend_name("auto")
    assert ane.resolve_backend_name("ref") == "ref"  # an explicit name wins over the environment


def test_resolution_env_and_errors(monkeypatch):
    expected_auto = "ane" if ane.available() else "ref"
    assert ane.resolve_backend_name("auto") == expected_auto
    monkeypatch.setenv("ANETRAIN_BACKEND", "ref")
    assert ane.resolve_backend_name("auto") == "ref"
    monkeypatch.setenv("ANETRAIN_BACKEND", "auto")
    assert ane.resolve_backend_name("auto") == expected_auto
    monkeypatch.setenv("ANETRAIN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="ANETRAIN_BACKEND must be 'ane', 'ref' or 'auto', got 'gpu'"):
        ane.resolve_backend_name("auto")
    with pytest.raises(ValueError, match="backend must be 'ane', 'ref' or 'auto', got 'cuda'"):
        ane.resolve_backend_name("cuda")


def test_supported_ops_per_chip():
    # the ops of the programs known to train, on every family (docs/ane-rules.md)
    for family in ("M1", "M2", "M3", "M4", "M5", "", "M9"):
        for op in ("matmul", "conv", "softmax", "slice_by_size", "concat", "reduce_sum", "pow"):
            assert _native.ane_supports_op(op, family), (op, family)
        for op in ("cast", "scaled_dot_product_attention", "einsum", "relu"):
            assert not _native.ane_supports_op(op, family), (op, family)
    assert ane.rules("M1")["dialects"] == ["1.3/ios18", "1.0/ios16-verbose"]
    assert ane.rules("M4")["dialects"] == ["1.3/ios18"]


ADD_PROGRAM = doubled(Mil({"version": "1.3", "opset": "ios18", "verbose_scalars": False}), None)[0]


def add_program_for_this_mac():
    """ADD_PROGRAM in this machine's MIL dialect."""
    return doubled(Mil(ane.dialect()), None)[0]


@off_mac
def test_kernels_honour_anetrain_backend(monkeypatch):
    from anetrain import kernels

    monkeypatch.setenv("ANETRAIN_BACKEND", "ref")
    assert kernels.compile(ADD_PROGRAM, name="k").backend.name == "ref"
    monkeypatch.setenv("ANETRAIN_BACKEND", "ane")
    with pytest.raises(ValueError, match="ANETRAIN_BACKEND 'ane' is not usable here"):
        kernels.compile(ADD_PROGRAM, name="k")


# ------------------------------------------------------------------ C++ checks (fallback with fake backends, packing rewrite)

@pytest.mark.slow
def test_portable_cpp_checks(tmp_path):
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("needs a C++ compiler")
    srcs = ["tests/native/ane_portable_test.cpp", "native/backend/fallback.cpp", "native/backend/backend.cpp",
            "native/backend/ane/packing.cpp", "native/mil/ir.cpp", "native/mil/parse.cpp"]
    exe = tmp_path / "ane_portable_test"
    cmd = ([shutil.which("ccache")] if shutil.which("ccache") else []) + [cxx, "-std=c++17", "-O0", "-Inative"]
    build = subprocess.run(cmd + srcs + ["-o", str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("clang++") and os.path.isdir("/usr/include/GNUstep/Foundation")),
                    reason="needs clang and GNUstep headers (.ci/objc_check.sh installs them in CI)")
def test_objc_check_passes():
    r = subprocess.run(["bash", ".ci/objc_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   native/backend/ane/runtime.mm" in r.stdout


# ------------------------------------------------------------------ packed inputs (ANETRAIN_ANE_MULTI_INPUT=0)

@pytest.mark.parametrize("verbose", [False, True])
def test_packed_program_computes_the_same_on_ref(rng, verbose):
    from anetrain import kernels
    from anetrain.ane_programs import Mil, attention

    m = Mil({"version": "1.0" if verbose else "1.3", "opset": "ios16" if verbose else "ios18", "verbose_scalars": verbose})
    text, weights, shapes = attention(m, rng)
    packed = _native.ane_packed_program(text)
    summary = _native.mil_parse_summary(packed)
    assert [(n, tuple(s)) for n, _, s in summary["inputs"]] == [("anetrain_packed_input", (1, 192, 1, 32))]
    assert ('tensor<string, []>("q")' in packed) == verbose
    q, k, v = (rng.standard_normal(s).astype(np.float16) for s in shapes)
    ref = kernels.new_backend("ref")
    want = kernels.compile(text, weights, backend=ref, name="attn")(q, k, v)
    got = kernels.compile(packed, weights, backend=ref, name="attn_packed")(np.concatenate([q, k, v], axis=1))
    np.testing.assert_array_equal(got, want)


def test_unpackable_programs_say_why():
    text = ADD_PROGRAM.replace("tensor<fp16, [1, 64, 1, 32]> x)", "tensor<fp16, [1, 64, 1, 32]> x, tensor<fp16, [1, 64, 1, 16]> z)")
    with pytest.raises(ValueError, match="input 'z' has width 16, the first input 32"):
        _native.ane_packed_program(text)


# ------------------------------------------------------------------ surfaces

def round128(n):
    return max(128, math.ceil(n / 128) * 128)


def test_surface_sizes_round_to_128_bytes():
    shapes = [("fp16", [1, 768, 1, 256]), ("fp16", [1, 3, 1, 5]), ("fp32", [1, 3, 1, 11]), ("fp16", [1, 1, 1, 64]),
              ("fp32", [1, 1, 1, 32]), ("fp16", [1, 7, 1, 9])]
    outputs = [(f"y{i}", d, s) for i, (d, s) in enumerate(shapes)]
    plan = _native.ane_surface_plan([("x", "fp16", [1, 2, 1, 2])], outputs)
    for j, (dtype, shape) in enumerate(shapes):
        nbytes = int(np.prod(shape)) * (2 if dtype == "fp16" else 4)
        assert plan["surfaces"][j] == (nbytes, round128(nbytes))
        assert plan["outputs"][j] == (j, 0, nbytes)
    assert all(alloc % 128 == 0 for _, alloc in plan["surfaces"])


def test_slots_share_outputs_and_own_their_inputs():
    ins = [("x", "fp16", [1, 64, 1, 32]), ("w", "fp16", [1, 64, 1, 96])]
    outs = [("y", "fp16", [1, 96, 1, 32]), ("z", "fp32", [1, 4, 1, 32])]
    plan = _native.ane_surface_plan(ins, outs, packed_inputs=False, slots=3)
    assert plan["request_outputs"] == [0, 1]
    assert plan["request_inputs"] == [[2, 3], [4, 5], [6, 7]]
    assert len(plan["surfaces"]) == 8
    for slot in range(3):
        assert plan["inputs"][slot] == [(2 + 2 * slot, 0, 64 * 32 * 2), (3 + 2 * slot, 0, 64 * 96 * 2)]


def test_packed_inputs_sit_at_their_channel_offsets():
    ins = [("q", "fp16", [1, 64, 1, 32]), ("k", "fp16", [1, 16, 1, 32]), ("v", "fp16", [1, 48, 1, 32])]
    plan = _native.ane_surface_plan(ins, [("y", "fp16", [1, 64, 1, 32])], packed_inputs=True, slots=2)
    assert plan["request_inputs"] == [[1], [2]]
    total = (64 + 16 + 48) * 32 * 2
    assert plan["surfaces"][1] == (total, round128(total))
    packed_spec = [1, 64 + 16 + 48, 1, 32]
    offsets = [_native.ane_channel_offset("fp16", packed_spec, c) for c in (0, 64, 80)]
    assert offsets == [0, 64 * 32 * 2, 80 * 32 * 2]
    assert [r[1] for r in plan["inputs"][1]] == offsets
    assert [r[0] for r in plan["inputs"][1]] == [2, 2, 2]


def test_channel_offset_errors():
    assert _native.ane_channel_offset("fp32", [1, 10, 1, 7], 3) == 3 * 7 * 4
    with pytest.raises(RuntimeError, match="outside"):
        _native.ane_channel_offset("fp16", [1, 10, 1, 7], 11)
    with pytest.raises(RuntimeError, match=r"not laid out \[1, C, H, W\]"):
        _native.ane_channel_offset("fp16", [10, 7], 1)


def test_surface_dtypes_are_fp16_or_fp32():
    with pytest.raises(ValueError, match="'fp16' or 'fp32'"):
        _native.ane_surface_plan([("x", "int32", [1, 2, 1, 2])], [])


def test_fp32_host_data_lands_as_rne_fp16_at_the_offset(rng):
    shape = [1, 5, 1, 12]
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.flat[:4] = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 65519.0, 1e-8]  # ties to even, overflow edge, underflow
    surface = np.full(1024, 0xAB, dtype=np.uint8)
    _native.ane_write_tensor("fp16", shape, x, surface, offset=256)
    written = surface[256:256 + x.size * 2].view(np.float16)
    np.testing.assert_array_equal(written.view(np.uint16), x.astype(np.float16).ravel().view(np.uint16))
    assert np.all(surface[:256] == 0xAB) and np.all(surface[256 + x.size * 2:] == 0xAB)
    back = np.empty(shape, dtype=np.float32)
    _native.ane_read_tensor("fp16", shape, surface, back, offset=256)
    np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))


def test_fp16_and_fp32_host_data_copy_bit_exact(rng):
    shape = [1, 3, 1, 16]
    h = rng.standard_normal(shape).astype(np.float16)
    surface = np.zeros(256, dtype=np.uint8)
    _native.ane_write_tensor("fp16", shape, h, surface)
    np.testing.assert_array_equal(surface[:h.nbytes], h.view(np.uint8).ravel())
    f = rng.standard_normal(shape).astype(np.float32)
    _native.ane_write_tensor("fp32", shape, f, surface)
    np.testing.assert_array_equal(surface[:f.nbytes], f.view(np.uint8).ravel())
    out = np.empty(shape, dtype=np.float32)
    _native.ane_read_tensor("fp32", shape, surface, out)
    np.testing.assert_array_equal(out, f)


def test_a_reused_input_refreshes_only_the_columns_written(rng):
    # the trainer's packed inputs: activations in the first columns change every step, the staged
    # weights to their right do not, and only the changed columns are copied
    shape = [1, 4, 1, 96]
    surface = np.full(4 * 96 * 2, 0xAB, dtype=np.uint8)
    h = rng.standard_normal(shape).astype(np.float16)
    _native.ane_write_columns("fp16", shape, h, surface, [(0, 32), (64, 70)])
    got = surface.view(np.uint16).reshape(4, 96)
    expect = np.full((4, 96), 0xABAB, dtype=np.uint16)
    expect[:, 0:32] = h[0, :, 0, 0:32].view(np.uint16)
    expect[:, 64:70] = h[0, :, 0, 64:70].view(np.uint16)
    np.testing.assert_array_equal(got, expect)
    f = rng.standard_normal(shape).astype(np.float32)  # fp32 host data is rounded as it goes in
    _native.ane_write_columns("fp16", shape, f, surface, [(90, 96)])
    np.testing.assert_array_equal(got[:, 90:96], f[0, :, 0, 90:96].astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(got[:, 0:32], expect[:, 0:32])
    _native.ane_write_columns("fp16", shape, h, surface, [])  # no ranges: everything
    np.testing.assert_array_equal(got, h[0, :, 0, :].view(np.uint16))
    for bad in ([(0, 97)], [(-1, 3)], [(5, 5)]):
        with pytest.raises(anetrain.BackendError, match="not inside its width 96"):
            _native.ane_write_columns("fp16", shape, h, surface, bad)


def test_host_buffers_must_match_the_tensor():
    surface = np.zeros(256, dtype=np.uint8)
    with pytest.raises(RuntimeError, match="has 8 elements; the buffer has 6"):
        _native.ane_write_tensor("fp16", [1, 2, 1, 4], np.zeros(6, np.float32), surface)
    with pytest.raises(RuntimeError, match="is fp32; the buffer is fp16"):
        _native.ane_write_tensor("fp32", [1, 2, 1, 4], np.zeros(8, np.float16), surface)
    with pytest.raises(ValueError, match="does not fit"):
        _native.ane_write_tensor("fp16", [1, 2, 1, 4], np.zeros(8, np.float16), surface, offset=250)


# ------------------------------------------------------------------ scripts

@off_mac
def test_probe_skips_with_one_line_and_exit_77():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "probe.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 77, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "macOS" in lines[0]


@off_mac
def test_selftest_stops_at_rung_1_with_one_line_and_a_report(tmp_path):
    report = tmp_path / "x.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "selftest_ane.py"), "--report", str(report)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    reason = ane.unavailable_reason()
    assert lines == [f"selftest_ane: rung 1 (AppleNeuralEngine.framework loads) failed: {reason}"]
    got = json.loads(report.read_text())
    assert got["ok"] is False and got["anetrain"] == anetrain.__version__
    assert set(got["chip"]) == {"brand", "model", "family", "ane_subtype"}
    assert got["dialect"] == ane.dialect() and got["dialect_string"] == ane.dialect_string()
    assert "macos" in got and got["options"]["compile_budget"] == 100
    first, *later = got["rungs"]
    assert (first["rung"], first["name"], first["ok"], first["error"]) == (1, "framework", False, reason)
    assert "seconds" in first["timings"]
    assert [r["rung"] for r in later] == [2, 3, 4, 5, 6]
    assert all(r["ok"] is None and r["error"] == "not run" for r in later)


def test_selftest_scales_packed_weight_blocks_only(rng):
    selftest = load_script("selftest_ane")
    layout = [("x", 0, 0, 64, 32), ("layers.0.wq", 0, 32, 64, 64), ("w2", 0, 96, 64, 32)]
    x = selftest.kernel_input(layout, [1, 64, 1, 128], rng).astype(np.float32)
    assert 0.5 < x[..., :32].std() < 1.5
    assert x[..., 32:].std() < 4 * selftest.WEIGHT_SCALE


def test_selftest_relative_error():
    selftest = load_script("selftest_ane")
    ref = np.linspace(-4, 4, 64, dtype=np.float32)
    assert selftest.relative_error(ref + 0.01, ref) < selftest.KERNEL_TOLERANCE
    assert selftest.relative_error(ref + 0.5, ref) > selftest.KERNEL_TOLERANCE
    assert selftest.relative_error(np.full_like(ref, np.nan), ref) == float("inf")
    assert selftest.relative_error(ref[:32], ref) == float("inf")


# ------------------------------------------------------------------ the hand-written programs on the ref backend

def numpy_reference(name, weights, inputs):
    """What each built-in program computes, in float32 from its fp16 inputs and weights."""
    x = [a.astype(np.float32) for a in inputs]
    blob = {k.rsplit("/", 1)[1]: np.frombuffer(v[128:], dtype=np.float16).astype(np.float32) for k, v in weights.items()}
    if name == "linear_conv_blobfile":
        w = blob["w.bin"].reshape(-1, x[0].shape[1])
        return (w @ x[0][0, :, 0, :])[None, :, None, :]
    if name == "attention_causal_mask":
        s = x[0].shape[3]
        q, k, v = (t.reshape(1, 4, 16, s).transpose(0, 1, 3, 2) for t in np.split(x[0], 3, axis=1))
        scores = q @ k.transpose(0, 1, 3, 2) * 0.25 + blob["mask.bin"].reshape(1, 1, s, s)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (p @ v).transpose(0, 1, 3, 2).reshape(1, 64, 1, s)
    if name == "matmul_packed_weights":
        seq = 32  # activation columns; the rest of the row is the packed [cin, cout] weight
        a, m = x[0][0, :, 0, :seq], x[0][0, :, 0, seq:]
        return (m.T @ a)[None, :, None, :]
    if name == "rmsnorm":
        g = blob["g.bin"].reshape(1, -1, 1, 1)
        return x[0] / np.sqrt((x[0] ** 2).mean(axis=1, keepdims=True) + 1e-5) * g
    if name == "softmax_channels":
        e = np.exp(x[0] - x[0].max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise KeyError(name)


@pytest.mark.parametrize("dialect", [{"version": "1.3", "opset": "ios18", "verbose_scalars": False},
                                     {"version": "1.0", "opset": "ios16", "verbose_scalars": True}])
def test_builtin_programs_compute_what_they_claim(rng, dialect):
    from anetrain import kernels
    from anetrain.ane_programs import BUILTIN, Mil

    m = Mil(dialect)
    for name, build in BUILTIN.items():
        text, weights, shapes = build(m, rng)
        inputs = [rng.standard_normal(s).astype(np.float16) for s in shapes]
        got = kernels.compile(text, weights=weights, backend="ref", name=name)(*inputs)
        want = numpy_reference(name, weights, inputs)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2, rtol=2e-2, err_msg=name)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_kernels_default_to_this_machines_dialect(monkeypatch):
    from anetrain import kernels

    small = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=64, hidden_dim=128, seq_len=16)
    monkeypatch.setenv("ANETRAIN_MIL_DIALECT", "1.0/ios16-verbose")
    _, text, _, _, _ = kernels.model_kernels(small, "dynamic")[0]
    assert text.startswith("program(1.0)") and "main<ios16>" in text and 'tensor<string, []>("' in text
    monkeypatch.delenv("ANETRAIN_MIL_DIALECT")
    _, text, _, _, _ = kernels.model_kernels(small, "dynamic")[0]
    expected = ane.dialect_string().split("/")[0]
    assert text.startswith(f"program({expected})")


# ------------------------------------------------------------------ on a Mac with an ANE

@needs_ane
def test_selftest_passes_on_this_mac(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "selftest_ane.py"),
                        "--report", str(tmp_path / "report.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_ane
def test_a_rule_breaking_program_is_refused_before_the_compiler():
    spent = _native.ane_process_compiles()
    with pytest.raises(anetrain.BackendError, match="kernel 'bad_kernel' breaks the ANE rules.*op"):
        backends.new_backend("ane").native.compile(
            add_program_for_this_mac().replace("add(", "no_such_op("), {}, "bad_kernel")
    assert _native.ane_process_compiles() == spent


@needs_ane
def test_compile_errors_carry_the_compilers_message(rng):
    from anetrain.ane_programs import Mil, linear

    text, _, _ = linear(Mil(ane.dialect()), rng)  # obeys the rules, but its weight file is missing
    with pytest.raises(anetrain.BackendError, match="ANE compile failed|rejected the MIL program"):
        backends.new_backend("ane").native.compile(text, {}, "no_weights")


@needs_ane
def test_packed_inputs_plan_of_a_compiled_program(rng):
    from anetrain import kernels
    from anetrain.ane_programs import Mil, attention

    text, weights, shapes = attention(Mil(ane.dialect()), rng)
    k = kernels.compile(text, weights, backend=backends.new_backend("ane", multi_input=False), name="attn")
    plan = _native.ane_kernel_info(k._native)["surface_plan"]
    assert plan["request_inputs"] == [[1]]
    assert [r[1] for r in plan["inputs"][0]] == [0, 64 * 32 * 2, 2 * 64 * 32 * 2]


@needs_ane
def test_compile_budget_counts_every_ane_compile_of_the_process():
    from anetrain import kernels

    spent = _native.ane_process_compiles()
    b = backends.new_backend("ane", compile_budget=spent + 1)
    kernels.compile(add_program_for_this_mac(), backend=b, name="one")
    with pytest.raises(anetrain.CompileBudgetExceeded):
        kernels.compile(add_program_for_this_mac(), backend=backends.new_backend("ane", compile_budget=spent + 1), name="two")
