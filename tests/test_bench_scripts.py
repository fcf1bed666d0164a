"""The benchmark suites and their shared helpers (anetrain/bench.py).

The scripts run in their quick modes (smoke runs: speed is never asserted) and must write JSON
with the machine record and results of sane structure. The helpers are checked against
independent references: the FLOP count against PyTorch's FLOP counter on the reference step,
the impossible-result filter against crafted measurements."""
import json
import math
import os
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from anetrain import _native, ane, bench
from anetrain.config import ModelConfig, model_preset
from tests._optional_torch import torch, torch_ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE_KEYS = {"date", "machine", "cpu", "cores", "threads", "backend", "blas", "blas_core", "openblas_coretype",
                "versions"}


def run_script(name, *args, timeout=600):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return p


def run_json(tmp_path, name, *args):
    path = tmp_path / "out.json"
    p = run_script(name, *args, "--json", str(path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"BLAS core type \S+", p.stdout), p.stdout[:500]
    data = json.loads(path.read_text())
    assert MACHINE_KEYS <= set(data["machine"]), data["machine"]
    assert data["machine"]["cores"] >= 1 and data["machine"]["versions"]["anetrain"]
    return data, p.stdout


def check_stats(s):
    assert set(s) == {"min", "median", "max", "n"}
    assert 0 < s["min"] <= s["median"] <= s["max"] and s["n"] >= 1


def check_screened(data):
    """Every record is possible (positive times, within the stated peak); flagged ones say why."""
    peak = data["peak"]["flops"]
    assert peak is None or peak > 0
    for r in data["flagged"]:
        assert r["flag"]
    return peak


# ------------------------------------------------------------------ the scripts, quick


@pytest.mark.slow
def test_kernel_sweep_writes_both_programs_of_every_shape(tmp_path):
    data, out = run_json(tmp_path, "bench_kernels.py", "--sweep", "--quick", "--plot")
    assert data["suite"] == "bench_kernels_sweep" and data["machine"]["backend"] == "ref"
    peak = check_screened(data)
    rows = data["results"] + data["flagged"]
    shapes = {(r["cin"], r["cout"], r["seq"]) for r in rows}
    assert shapes == {(w, w * k, 64) for w in (128, 256) for k in (1, 4)}
    assert sorted(r["kind"] for r in rows) == ["baked"] * 4 + ["dynamic"] * 4
    for r in data["results"]:
        assert r["flops"] == 2 * r["cout"] * r["cin"] * r["seq"]
        check_stats(r["eval"])
        assert r["compile_ms"] > 0 and r["load_ms"] is None  # ref has no separate load
        assert r["gflops"] * 1e9 == pytest.approx(r["flops"] / r["eval"]["median"])
        assert r["flops"] / r["eval"]["min"] <= peak
        assert r["rel_error"] < 1e-2  # each program computed W x
        check_stats(r["blas"])
        if r["kind"] == "dynamic":
            check_stats(r["write_weights"])
        else:
            assert "write_weights" not in r
    for suffix in ("_latency.png", "_gflops.png"):
        png = tmp_path / ("out" + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stated peak" in out


@pytest.mark.slow
def test_kernel_overhead_check_writes_json(tmp_path):
    data, out = run_json(tmp_path, "bench_kernels.py", "--quick")
    assert data["suite"] == "bench_kernels"
    check_screened(data)
    assert len(data["results"]) + len(data["flagged"]) == 3
    for r in data["results"]:
        for k in ("api", "eval", "blas"):
            check_stats(r[k])
        assert r["max_error"] < 0.1
    assert re.search(r"^worst eval/blas ratio", out, re.M)


@pytest.mark.slow
def test_pipeline_suite_writes_all_three_parts(tmp_path):
    data, out = run_json(tmp_path, "bench_pipeline.py", "--quick", "--plot")
    assert data["suite"] == "bench_pipeline"
    peak = check_screened(data)
    flagged_parts = [r["part"] for r in data["flagged"]]
    cfg = model_preset("tiny")
    cfg.seq_len = 64
    if "stack" not in flagged_parts:
        (s,) = data["stack"]
        assert s["layers"] == 4 and s["kernel"] == "ffn_forward"
        assert s["flops"] == 4 * bench.kernel_flops(cfg, "ffn_forward")
        check_stats(s["end_to_end"])
        check_stats(s["per_layer"])
        assert s["per_layer"]["n"] == 4 * s["end_to_end"]["n"]
    assert {(r["kernel"], r["seq"]) for r in data["seq"]} | {(r["kernel"], r["seq"]) for r in data["flagged"]
                                                             if r["part"] == "seq"} == \
        {(k, s) for k in ("attention_forward", "ffn_forward", "ffn_backward", "attention_backward") for s in (64, 128)}
    for r in data["seq"]:
        check_stats(r["eval"])
        assert r["flops"] / r["eval"]["min"] <= peak
    if "step" not in flagged_parts:
        (st,) = data["step"]
        check_stats(st["step"])
        check_stats(st["gemm_only"])
        assert st["flops"] == bench.total_flops(bench.step_gemms(cfg))
        for part in ("kernels", "dw", "cpu_ops"):  # each timed part beside its own products
            assert st["components"][part]["gemm_only_ms"] > 0
        shares = [c["share"] for c in st["components"].values()]
        assert all(0 <= x <= 1 for x in shares) and sum(shares) <= 1.0 + 1e-9
        assert st["compile"]["ms"] > 0 and st["compile"]["when"].startswith("once")
    for suffix in ("_seq_latency.png", "_seq_gflops.png"):
        assert (tmp_path / ("out" + suffix)).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bench_train_reports_the_overhead_ratio_of_paired_runs(tmp_path):
    data, out = run_json(tmp_path, "bench_train.py", "--quick", "--no-torch")
    assert data["suite"] == "bench_train"
    (r,) = data["results"] + data["flagged"]
    assert r["preset"] == "tiny" and r["seq"] == 32
    cfg = model_preset("tiny")
    cfg.seq_len = 32
    assert r["step_flops"] == bench.total_flops(bench.step_gemms(cfg))
    check_stats(r["step"])
    check_stats(r["gemm_only"])
    assert r["overhead"]["min"] <= r["overhead"]["median"] <= r["overhead"]["max"]
    assert "torch" not in r
    m = re.search(r"overhead ratio (\d+\.\d+)", out)
    assert m and float(m.group(1)) == pytest.approx(r["overhead"]["median"], abs=0.0006)


@pytest.mark.slow
def test_fp16_benchmark_writes_json(tmp_path):
    data, out = run_json(tmp_path, "bench_fp16.py", "--quick")
    assert data["suite"] == "bench_fp16" and data["n"] == 1 << 20
    rows = data["results"] + data["flagged"]
    assert len(rows) == 6
    for r in data["results"]:
        assert r["seconds"] > 0 and r["gbs"] == pytest.approx(6 * data["n"] / 1e9 / r["seconds"])


@pytest.mark.slow
@pytest.mark.torch
def test_bench_train_reports_the_median_of_alternating_rounds(tmp_path):
    # the smallest preset: the rounds and their median are what is checked, not the model
    data, out = run_json(tmp_path, "bench_train.py", "--presets", "tiny", "--seq", "16", "--steps", "1",
                         "--rounds", "3")
    m = re.search(r"^  PyTorch \S+ .*\| ratio (\d+\.\d+) \(rounds: ([\d., ]+)\)$", out, re.M)
    assert m, out
    rounds = [float(x) for x in m.group(2).split(", ")]
    assert len(rounds) == 3 and rounds == sorted(rounds)
    assert float(m.group(1)) == pytest.approx(statistics.median(rounds), abs=0.006)
    (r,) = data["results"] + data["flagged"]
    assert r["torch_ratio"]["median"] == pytest.approx(statistics.median(r["torch_ratio_rounds"]))
    assert re.search(r"^  tiny: overhead \d+\.\d+; ratio \d+\.\d+, memory \d+/\d+ MB -> (met|NOT met)$",
                     out, re.M)


def test_bench_train_rejects_zero_rounds():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_train.py"), "--rounds", "0"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode != 0 and "--rounds and --steps must be at least 1" in p.stderr


@pytest.mark.slow
@pytest.mark.torch
def test_bench_dp_reports_each_way_and_the_traffic_per_step():
    from anetrain import config

    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_dp.py"), "--seq-len", "32",
                        "--batch-size", "1", "--steps", "3", "--rounds", "1"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"^BLAS core type: \S+", p.stdout, re.M)
    for name in ("1 process", "2 ranks, after", "2 ranks, overlap"):
        assert re.search(rf"^{name} +\d+\.\d +\d+ +\d+\.\d\dx", p.stdout, re.M), p.stdout
    assert re.search(r"^2 ranks, overlap .* ms +\d+%$", p.stdout, re.M), p.stdout
    # 2 ranks: a ring all-reduce sends (and receives) the whole fp32 gradient once per rank
    mb = 4 * config.model_preset("tiny").n_params() / 1e6
    assert f"2 machines: {mb:.1f} MB sent and received per rank per step" in p.stdout


def test_bench_dp_rejects_too_few_steps():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_dp.py"), "--steps", "2"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --steps must be at least 3, --rounds and --batch-size at least 1"


@pytest.mark.slow
@pytest.mark.torch
def test_bench_generate_reports_ratios_and_the_targets():
    pytest.importorskip("transformers", reason="the benchmark compares against transformers' generate")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_generate.py"), "--presets", "stories15M",
                        "--tokens", "4", "--rounds", "2", "--repeats", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"^BLAS core type: \S+", p.stdout, re.M)
    m = re.search(r"^stories15M: .*\| speedup (\d+\.\d+) \(rounds: ([\d., ]+)\)$", p.stdout, re.M)
    assert m, p.stdout
    rounds = [float(r) for r in m.group(2).split(", ")]
    assert len(rounds) == 2 and float(m.group(1)) == pytest.approx(statistics.median(rounds), abs=0.006)
    assert "greedy tokens: the same" in p.stdout  # the two decoders ran the same model
    assert re.search(r"^  stories15M: speedup [\d.]+, bound [\d.]+x, memory [\d.]+x -> (met|NOT met)$", p.stdout, re.M)


@pytest.mark.parametrize("script,args,message", [
    ("bench_train.py", ["--rounds", "0"], "--rounds and --steps must be at least 1"),
    ("bench_kernels.py", ["--sweep", "--seqs", "100"], "--seqs must be multiples of 32"),
    ("bench_kernels.py", ["--sweep", "--max-width", "64"], "--widths must name at least one positive width"),
    ("bench_pipeline.py", ["--layers", "0"], "--layers, --evals, --steps and --batch must be at least 1"),
    ("bench_fp16.py", ["--path", "mmx"], "--path mmx: unknown fp16 path"),
])
def test_bad_settings_give_one_error_line(script, args, message):
    p = run_script(script, *args, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr


# ------------------------------------------------------------------ FLOP counts


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (64, 1, 128)])
def test_gemm_flops_counts_a_multiply_and_an_add_per_term(m, n, k):
    # count the terms of C = A B one by one: each is one multiply and one add
    terms = sum(1 for _ in range(m) for _ in range(n) for _ in range(k))
    assert bench.gemm_flops(m, n, k) == 2 * terms


@pytest.mark.torch
@pytest.mark.parametrize("cfg,batch", [
    (ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=48, seq_len=8), 2),
    (ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=16, hidden_dim=48), 1),
])
def test_step_gemms_are_every_product_pytorch_counts(cfg, batch):
    """The GEMM list of a step has the FLOPs PyTorch's own counter finds in the reference model's
    forward and backward pass (every matmul, linear and bmm, their gradients included)."""
    from torch.utils.flop_counter import FlopCounterMode

    from anetrain.model import Model

    init = Model(cfg, backend="ref", seed=1)
    model = torch_ref.build(init.config, init.weights())
    tokens = torch.tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, cfg.seq_len + 1)))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(tokens)
        loss.backward()
    assert bench.total_flops(bench.step_gemms(cfg, batch)) == counter.get_total_flops()


def test_kernel_flops_add_up_to_the_layers_share_of_the_step():
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=96, seq_len=32)
    gemms = bench.step_gemms(cfg)
    per_layer = sum(bench.kernel_flops(cfg, k) for k in bench.KERNEL_PRODUCTS)
    dw = sum(g.count * bench.gemm_flops(g.m, g.n, g.k) for g in gemms if g.name.endswith(".dw")
             and g.name.startswith("layers."))
    classifier = sum(bench.gemm_flops(g.m, g.n, g.k) for g in gemms if not g.name.startswith("layers."))
    assert bench.total_flops(gemms) == cfg.n_layers * per_layer + dw + classifier
    # recomputing the scores adds one S x S x head_dim product per head
    extra = bench.kernel_flops(cfg, "attention_backward", recomputes_probs=True) - \
        bench.kernel_flops(cfg, "attention_backward")
    assert extra == cfg.n_heads * 2 * cfg.seq_len * cfg.seq_len * cfg.head_dim


def test_components_split_the_products_where_the_trainer_times_them():
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=40, seq_len=16)
    gemms = bench.step_gemms(cfg, batch=2)
    groups = bench.by_component(gemms)
    assert sorted(g for v in groups.values() for g in v) == sorted(gemms)
    assert all(g.name.endswith(".dw") and g.name.startswith("layers.") for g in groups["dw"])
    assert {g.name for g in groups["cpu_ops"]} == {"classifier", "classifier.dx", "tok_embeddings.dw"}
    assert len(groups["dw"]) == 2 * cfg.n_layers * 7


def test_gemm_runner_runs_the_products_it_lists():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=40, seq_len=16)
    gemms = bench.step_gemms(cfg, batch=2)
    runner = bench.GemmRunner(gemms)
    runner()
    assert len(runner.calls) == len(gemms)
    uses = {g.name: sum(1 for h in gemms if h.name == g.name) for g in gemms}
    for g, (_, args) in zip(gemms, runner.calls):
        a, b, ta, tb, c = args[:5]
        assert (ta, tb) == (g.trans_a, g.trans_b)
        assert a.shape[-2:] == ((g.k, g.m) if ta else (g.m, g.k)) and b.shape[-2:] == ((g.n, g.k) if tb else (g.k, g.n))
        assert c.shape == ((g.count, g.m, g.n) if g.count > 1 else (g.m, g.n))
        # operands of 0.01: each product adds k terms of 1e-4; a batch's weight gradients
        # accumulate into one C (the first product overwrites), other products overwrite
        want = g.k * 1e-4 * (uses[g.name] if g.name.endswith(".dw") else 1)
        np.testing.assert_allclose(c, want, rtol=1e-4)
    assert any(g.accumulate for g in gemms) and uses["layers.0.wq.dw"] == 2


# ------------------------------------------------------------------ the impossible-result filter


@pytest.mark.parametrize("seconds,flops,peak,expect", [
    (0.0, None, None, "not positive"),
    (-1e-3, None, None, "not positive"),
    (float("nan"), None, None, "not positive"),
    (float("inf"), None, None, "not positive"),
    (None, None, None, "not positive"),
    ([1e-3, 2e-3, -5e-4], 1e6, 1e12, "not positive"),   # one bad time spoils the set
    (1e-3, 2e9, 1e12, "2000.0 GFLOP/s exceeds the stated peak 1000.0 GFLOP/s"),
    (1e-3, 1e9, 1e12, ""),                              # exactly at the peak: possible
    (1e-3, 1e15, None, ""),                             # no stated peak: only the times are checked
    ([2e-3, 1e-3], 1.5e9, 1e12, "exceeds"),             # the fastest time decides
    ([2e-3, 1.6e-3], 1.5e9, 1e12, ""),
])
def test_impossible_results_are_named(seconds, flops, peak, expect):
    why = bench.impossible(seconds, flops, peak)
    if expect:
        assert expect in why
    else:
        assert why == ""


def test_screen_keeps_possible_results_and_flags_the_rest():
    peak = 100e9
    rows = [dict(name="ok", seconds=[0.02, 0.01], flops=1e9),          # 100 GFLOP/s: at the peak
            dict(name="fast", seconds=[0.02, 0.005], flops=1e9),       # 200 GFLOP/s
            dict(name="negative", seconds=[-0.01, 0.02], flops=1e9),
            dict(name="zero", seconds=0.0),
            dict(name="no flops", seconds=0.5)]
    kept, flagged = bench.screen(rows, peak)
    assert [r["name"] for r in kept] == ["ok", "no flops"]
    assert [r["name"] for r in flagged] == ["fast", "negative", "zero"]
    assert "200.0 GFLOP/s exceeds the stated peak 100.0 GFLOP/s" in flagged[0]["flag"]
    assert all("flag" not in r for r in kept) and all("flag" not in r for r in rows)


def test_chip_peaks_have_sources_and_ultra_doubles():
    for family, (tops, source) in bench.CHIP_PEAKS.items():
        assert source and (tops is None or tops > 0)
    one, _ = bench.chip_peak(dict(family="M1", brand="Apple M1 Max"))
    two, src = bench.chip_peak(dict(family="M1", brand="Apple M1 Ultra"))
    assert one == 11e12 and two == 2 * one and "Ultra" in src
    assert bench.chip_peak(dict(family="", brand=""))[0] is None


def test_stated_peak_on_ref_is_this_runs_blas_peak():
    p = bench.stated_peak("ref", 123e9)
    assert p["flops"] == 123e9 and "BLAS" in p["source"]
    measured = bench.blas_peak(n=128, repeats=2)
    assert measured > 0 and math.isfinite(measured)


# ------------------------------------------------------------------ statistics and the machine record


def test_summary_and_paired_ratios():
    assert bench.summary([3, 1, 2]) == dict(min=1.0, median=2.0, max=3.0, n=3)
    r = bench.ratio_summary([2.0, 3.0, 8.0], [1.0, 2.0, 4.0])  # 2, 1.5, 2
    assert r == dict(min=1.5, median=2.0, max=2.0, n=3)


def test_alternate_takes_turns_round_by_round():
    order = []
    samples = bench.alternate([lambda: order.append("a"), lambda: order.append("b")], rounds=3, reps=2, warmup=1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(s) for s in samples] == [3, 3] and all(t >= 0 for s in samples for t in s)


def test_machine_record_names_the_machine():
    rec = bench.machine_record("ref")
    assert MACHINE_KEYS <= set(rec)
    assert rec["blas_core"] == _native.build_info()["blas_core"]
    json.dumps(rec)  # plain JSON
    if sys.platform == "darwin":
        assert rec["macos"] and rec["chip"] == ane.chip()
    assert rec["backend"] in bench.describe_machine(rec)
