"""Layer 5: the driver end to end — `python scripts/train.py` as a user runs it.

Every test runs the real command in a subprocess on the shipped data (the tiny preset, shrunk
where the test only needs a few steps) and reads what it wrote: metrics.jsonl, checkpoints,
stderr and the exit status.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
# a small, fast model on the shipped corpus (vocab 1024)
SMALL = ["--no-report", "--dim", "64", "--n-layers", "2", "--n-heads", "4", "--seq-len", "32", "--batch-size", "4",
         "--eval-interval", "0", "--sample-interval", "0", "--backend", "ref"]


def train(*args, timeout=600, check=True):
    p = subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def records(out, kind=None):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    if kind == "step":
        return [r for r in recs if "loss" in r]
    return [r for r in recs if r.get("type") == kind] if kind else recs


def losses(out):
    return [r["loss"] for r in records(out, "step")]


@pytest.mark.slow
def test_tiny_preset_learns_on_shipped_data(tmp_path):
    out = str(tmp_path / "run")
    p = train("--preset", "tiny", "--steps", "60", "--batch-size", "4", "--eval-interval", "30",
              "--sample-interval", "60", "--sample-tokens", "20", "--backend", "ref", "--out", out)
    evals = records(out, "eval")
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals
    assert evals[0]["val_loss"] == pytest.approx(np.log(1024), rel=0.1)  # untrained: near uniform
    steps = records(out, "step")
    assert [r["step"] for r in steps] == list(range(1, 61))
    for r in steps:
        assert set(r["ms"]) >= {"kernels", "io", "cpu_ops", "optimizer", "compile"} and r["tflops"] > 0
    assert records(out, "sample") and "sample:" in p.stderr
    assert "TFLOPS" in p.stderr and "compile" in p.stderr  # the efficiency report
    assert os.path.exists(os.path.join(out, "ckpt_00000060.safetensors"))


# the Qwen3 family on SMALL: heads of 32 (q_dim 128 != dim 64), QK-norm, rope_theta 1e6, untied
QWEN = ["--head-dim", "32", "--qk-norm", "--rope-theta", "1000000", "--norm-eps", "1e-6", "--no-tie-embeddings"]


@pytest.mark.parametrize("family", [[], QWEN], ids=["llama", "qwen"])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, family):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train(*SMALL, *family, "--steps", "8", "--out", full)
    train(*SMALL, *family, "--steps", "4", "--out", part)
    p = train(*SMALL, *family, "--steps", "8", "--out", part, "--resume")
    assert "resumed from" in p.stderr
    assert losses(part) == losses(full)  # exact float equality, every step
    assert len(losses(full)) == 8
    if family:
        from anetrain import checkpoint

        arrays, meta = checkpoint.load(checkpoint.latest(full))
        assert (meta["config"]["head_dim"], meta["config"]["qk_norm"], meta["config"]["tie_embeddings"]) == \
            (32, True, False)
        assert arrays["weight:layers.1.attention.wq"].shape == (128, 64)
        assert {"weight:layers.0.attention.q_norm", "m:output", "v:layers.1.attention.k_norm"} <= set(arrays)
        assert losses(full)[-1] < losses(full)[0]


@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_exec_restarts_reproduce_the_uninterrupted_run(tmp_path, pipeline):
    plain, restarted = str(tmp_path / "plain"), str(tmp_path / "restarted")
    args = [*SMALL, "--steps", "6", "--pipeline", pipeline]
    train(*args, "--out", plain)
    # static: 4 kernels x 2 layers = 8 compiles per step; a budget of 16 fits two steps per process
    budget = "16" if pipeline == "static" else "4"
    p = train(*args, "--out", restarted, "--compile-budget", budget)
    if pipeline == "static":
        assert p.stderr.count("[restart after step") == 2, p.stderr
    else:
        assert "[restart" not in p.stderr  # compiled once, never restarts
    assert losses(restarted) == losses(plain)


def test_evaluations_on_the_static_pipeline_are_budgeted_with_their_step(tmp_path):
    # an evaluation after an update compiles a new kernel set on the static pipeline: the restart
    # comes before a step whose evaluation would not fit, never in the middle of the evaluation
    plain, restarted = str(tmp_path / "plain"), str(tmp_path / "restarted")
    args = [*SMALL, "--steps", "6", "--pipeline", "static", "--eval-interval", "2"]
    train(*args, "--out", plain)
    p = train(*args, "--out", restarted, "--compile-budget", "16")
    assert "Traceback" not in p.stderr and p.stderr.count("[restart after step") >= 2, p.stderr
    assert losses(restarted) == losses(plain)
    evals = [[(r["step"], r["val_loss"]) for r in records(out, "eval")] for out in (plain, restarted)]
    assert evals[0] == evals[1] and [s for s, _ in evals[0]] == [0, 2, 4, 6]
    refused = train(*args, "--out", str(tmp_path / "small"), "--compile-budget", "12", check=False)
    assert refused.returncode == 2 and "cannot fit one static step and the evaluation after it (16 compiles)" \
        in refused.stderr


def test_samples_on_the_static_pipeline_need_no_compile_budget(tmp_path):
    # samples come from the CPU decoder: a budget of exactly one step's compiles suffices (a
    # forward pass compiling after each update would need twice that, as the evaluation does)
    args = [*SMALL, "--steps", "4", "--pipeline", "static", "--sample-interval", "2", "--sample-tokens", "4"]
    p = train(*args, "--out", str(tmp_path / "run"), "--compile-budget", "8")
    assert [r["step"] for r in records(str(tmp_path / "run"), "sample")] == [2, 4]
    assert p.stderr.count("[restart after step") == 3, p.stderr  # one step per process


def test_the_ane_shaped_programs_train_end_to_end_and_placement_is_recorded(tmp_path):
    split, shaped = str(tmp_path / "split"), str(tmp_path / "shaped")
    train(*SMALL, "--steps", "4", "--pipeline", "static", "--out", split)
    # the static pipeline through a restart: the ANE-shaped kernels are rebuilt in the new process
    p = train(*SMALL, "--steps", "4", "--pipeline", "static", "--out", shaped, "--ane-shaped",
              "--compile-budget", "16")
    assert "kernels (ane-shaped programs): attention_forward, ffn_forward, ffn_backward, " \
           "attention_backward on ref" in p.stderr
    assert losses(shaped) == losses(split)  # the same ops on the same fp16 values
    first = records(shaped)[0]
    assert first["type"] == "placement" and first["programs"] == "ane-shaped" and first["backend"] == "ref"
    assert set(first["kernels"]) == {"attention_forward", "ffn_forward", "ffn_backward", "attention_backward"}
    assert all(k == {"backend": "ref", "reason": ""} for k in first["kernels"].values())
    assert len(records(shaped, "placement")) == 2  # one per process (a restart after step 2)
    assert records(split, "placement")[0]["programs"] == "split"


def test_budget_too_small_for_one_step_is_a_clear_error(tmp_path):
    p = train(*SMALL, "--steps", "2", "--pipeline", "static", "--compile-budget", "5", "--out", str(tmp_path),
              check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: the compile budget (5) cannot fit one static step")
    assert "Traceback" not in p.stderr


def test_ctrl_c_saves_and_resume_continues(tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, TRAIN, *SMALL, "--steps", "100000", "--out", out], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: saved" in err and "Traceback" not in err
    done = len(losses(out))
    p = train(*SMALL, "--steps", str(done + 2), "--out", out, "--resume")
    assert f"at step {done}" in p.stderr
    assert len(losses(out)) == done + 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "2", "--out", out)
    good = os.path.join(out, "ckpt_00000002.safetensors")
    before = open(good, "rb").read()
    p = train(*SMALL, "--steps", "40", "--out", out, "--resume", "--lr", "1e30", "--warmup-steps", "0",
              "--grad-clip", "0", check=False)
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became") and "ckpt_00000002" in last, last
    assert open(good, "rb").read() == before
    assert sorted(os.listdir(out)) == [".anetrain.lock", "ckpt_00000002.safetensors", "metrics.jsonl"]


def _write_shard(path, tokens, dtype=np.uint16):
    np.asarray(tokens, dtype=dtype).tofile(path)


@pytest.mark.parametrize("case", ["missing", "empty", "odd_bytes", "id_too_big", "bad_preset", "bad_backend",
                                  "unwritable", "truncated_ckpt", "corrupt_ckpt", "other_model"])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, case):
    out = str(tmp_path / "run")
    args = [*SMALL, "--steps", "2", "--out", out]
    if case in ("truncated_ckpt", "corrupt_ckpt", "other_model"):
        train(*args)
        ckpt = os.path.join(out, "ckpt_00000002.safetensors")
        blob = bytearray(open(ckpt, "rb").read())
        if case == "truncated_ckpt":
            blob = blob[: len(blob) // 2]
        elif case == "corrupt_ckpt":
            blob[-100] ^= 0x40
        open(ckpt, "wb").write(bytes(blob))
        args = [*args, "--resume"] if case != "other_model" else [*SMALL, "--dim", "96", "--steps", "4", "--out",
                                                                   out, "--resume"]
        expect = {"truncated_ckpt": "ckpt_00000002", "corrupt_ckpt": "checksum", "other_model": "another model"}[case]
    elif case == "missing":
        args += ["--data", str(tmp_path / "nothing_*.bin"), "--vocab-size", "1024"]
        expect = "nothing_"
    elif case == "empty":
        _write_shard(tmp_path / "e.bin", [])
        args += ["--data", str(tmp_path / "e.bin"), "--vocab-size", "1024"]
        expect = "e.bin"
    elif case == "odd_bytes":
        (tmp_path / "o.bin").write_bytes(b"\x01\x00" * 500 + b"\x01")
        args += ["--data", str(tmp_path / "o.bin"), "--vocab-size", "1024"]
        expect = "o.bin"
    elif case == "id_too_big":
        _write_shard(tmp_path / "t.bin", list(range(5, 1500)))
        args += ["--data", str(tmp_path / "t.bin"), "--vocab-size", "1024"]
        expect = "1024"
    elif case == "bad_preset":
        args += ["--preset", "stories7B"]
        expect = "stories7B"
    elif case == "bad_backend":
        args += ["--backend", "gpu"]
        expect = "gpu"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args = [*SMALL, "--steps", "2", "--out", str(blocker / "sub")]
        expect = "--out"
    p = train(*args, check=False)
    assert p.returncode == 2, (case, p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and expect in lines[-1], (case, lines[-3:])
    assert "Traceback" not in p.stderr


def test_export_to_llama2c_and_start_from_it(tmp_path):
    from anetrain import checkpoint, llama2c

    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "2", "--out", out)
    model_bin = str(tmp_path / "model.bin")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_llama2c.py"), out, model_bin],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    cfg, weights = llama2c.read_model(model_bin)
    arrays, _ = checkpoint.load(checkpoint.latest(out))
    assert (cfg.dim, cfg.n_layers, cfg.vocab_size) == (64, 2, 1024)
    for name, w in weights.items():
        np.testing.assert_array_equal(w, arrays["weight:" + name[:-len(".weight")]], err_msg=name)
    v1_bin = str(tmp_path / "model_v1.bin")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_llama2c.py"), out, v1_bin,
                        "--version", "1"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    with open(v1_bin, "rb") as f:
        assert f.read(8) == bytes.fromhex("32346b6101000000")  # magic "ak42", version 1
    # a new run starts from the exported weights (a vanishing lr keeps them), shaped by the file
    out2 = str(tmp_path / "run2")
    p = train(*SMALL, "--steps", "1", "--lr", "1e-30", "--warmup-steps", "0", "--out", out2, "--init-from", v1_bin,
              "--seed", "99")
    assert "initialised from" in p.stderr
    started, _ = checkpoint.load(checkpoint.latest(out2))
    for name, w in weights.items():
        np.testing.assert_allclose(started["weight:" + name[:-len(".weight")]], w, rtol=0, atol=1e-6, err_msg=name)
    p = train(*SMALL, "--dim", "96", "--steps", "1", "--out", str(tmp_path / "run3"), "--init-from", model_bin,
              check=False)
    assert p.returncode == 2 and "holds another model (dim 64 vs 96" in p.stderr.strip().splitlines()[-1]
