"""The training benchmark as a user runs it, shrunk to seconds: it must run, print the BLAS core
type, and report as the ratio the median of its rounds' ratios (a smoke test of the script, not
a speed test: speed is never asserted in tests)."""
import os
import re
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.torch
def test_bench_train_reports_the_median_of_alternating_rounds():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_train.py"), "--presets", "stories15M",
                        "--seq", "16", "--steps", "1", "--rounds", "3"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"^BLAS core type: \S+", p.stdout, re.M)
    m = re.search(r"^stories15M: .*\| ratio (\d+\.\d+) \(rounds: ([\d., ]+)\)$", p.stdout, re.M)
    assert m, p.stdout
    rounds = [float(r) for r in m.group(2).split(", ")]
    assert len(rounds) == 3 and rounds == sorted(rounds)
    assert float(m.group(1)) == pytest.approx(statistics.median(rounds), abs=0.006)
    assert re.search(r"^  stories15M: ratio \d+\.\d+, memory \d+/\d+ MB -> (met|NOT met)$", p.stdout, re.M)


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
