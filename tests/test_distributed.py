"""Data-parallel training under torchrun: 2 ranks on loopback, as a user launches them.

The reference for the losses is one process that draws the windows of both ranks (the samplers
data.WindowSampler documents), computes each rank's gradient sum from zero and adds them in rank
order before the update, which is what an all-reduce of two ranks computes. Runs that take the
launch of more than one group of processes are marked slow. Without torch only the tests that
need no process group run (they check that torch stays out, and the error when it is missing).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from anetrain import checkpoint, config, data, distributed
from anetrain.model import Model
from test_train_cli import ROOT, SMALL, TRAIN, losses, records, train

WORKER = os.path.join(ROOT, "tests", "_dp_worker.py")
# what torchrun sets, and what an exec() restart leaves behind: none of it may leak into a run here
LAUNCH_ENV = distributed.LAUNCH_ENV + ("ANETRAIN_RESTARTS", "ANETRAIN_RETRY_STEP", "ANETRAIN_LOCK_FD")
STEPS = 20
# With fewer steps than the warm-up (50) the learning rate of a step does not depend on --steps,
# so a shorter run's losses are a prefix of a longer one's.
assert STEPS < config.TrainConfig().warmup_steps


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **{k: str(v) for k, v in extra.items()})
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(args, script=TRAIN):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), script, *map(str, args)]


def torchrun(*args, script=TRAIN, env=None, check=True, timeout=600):
    p = subprocess.run(torchrun_command(args, script), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=clean_env(**(env or {})))
    if check:
        assert p.returncode == 0, p.stderr[-4000:]
    return p


def our_errors(stderr):
    """The error lines anetrain printed (torchrun adds its own report after them)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def one_process(args, steps, world=2):
    """(losses, samplers) of one process that trains on the windows of ``world`` ranks, summing
    their gradients in rank order (see the module docstring)."""
    model_cfg, t = config.parse_args(list(map(str, args)))
    splits = data.open_splits(t.data, model_cfg.vocab_size, model_cfg.seq_len, t.val_data, t.val_fraction)
    samplers = [data.WindowSampler(splits.train, model_cfg.seq_len, t.seed, r, world) for r in range(world)]
    model = Model(model_cfg.native_kwargs(), backend=t.backend, pipeline=t.pipeline, loss_scale=t.loss_scale,
                  seed=t.seed)
    grads = model.flat("grad")
    out = []
    for step in range(steps):
        loss, sums = 0.0, []
        for sampler in samplers:
            grads[:] = 0
            loss += model.accumulate(sampler.batch(t.batch_size))
            sums.append(grads.copy())
        total = sums[0]
        for s in sums[1:]:
            total = total + s
        grads[:] = total
        model.update(config.lr_at(step, t), betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, clip=t.grad_clip)
        out.append(loss / world)
    return out, samplers


def args_for(pipeline):
    # each pipeline with one way of all-reducing: both must give the same sums
    allreduce = "overlap" if pipeline == "dynamic" else "after"
    return [*SMALL, "--pipeline", pipeline, "--allreduce", allreduce, "--ckpt-interval", "10", "--sync-check", "5"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """pipeline -> the --out of a 2-rank run of STEPS steps (rank 1 given its own --out, which it
    must leave alone), run once per module."""
    runs = {}

    def run(pipeline):
        if pipeline not in runs:
            base = tmp_path_factory.mktemp(f"two-ranks-{pipeline}")
            out, rank1_out = base / "run", base / "rank1-out"
            torchrun(*args_for(pipeline), "--steps", STEPS, "--out", out, script=WORKER,
                     env={"ANETRAIN_TEST_RANK1_ARGS": f"--out {rank1_out}"})
            assert not rank1_out.exists()  # the other ranks write nothing to --out
            runs[pipeline] = str(out)
        return runs[pipeline]

    return run


def test_single_process_training_never_imports_torch(tmp_path):
    out = str(tmp_path / "run")
    args = [*SMALL, "--steps", "2", "--ckpt-interval", "1", "--out", out]
    code = (f"import sys; from anetrain.trainer import main; "
            f"rc = main({args!r}) or main({args + ['--steps', '3', '--resume']!r}); "
            f"print(rc, 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=clean_env(),
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["0", "False"]
    assert [r["step"] for r in records(out, "step")] == [1, 2, 3]


def test_torchrun_without_torch_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    code = (f"import runpy, sys; sys.modules['torch'] = None; sys.argv = [{TRAIN!r}, '--out', {str(out)!r}]; "
            f"runpy.run_path({TRAIN!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=clean_env(RANK=0, WORLD_SIZE=2, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                                     MASTER_PORT=free_port()))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: torchrun started this run (WORLD_SIZE is set) but PyTorch is not installed; install it on every "
        "machine with pip install 'anetrain[distributed]' (or pip install torch)"]
    assert not out.exists()


def test_settings_and_checksum_mismatches_name_the_rank():
    model_cfg, t = config.parse_args(SMALL)
    ours = distributed.shared_settings(model_cfg, t)
    theirs = distributed.shared_settings(*config.parse_args([*SMALL, "--lr", "0.002", "--out", "elsewhere"]))
    assert distributed.settings_mismatch([ours, ours]) is None
    assert distributed.settings_mismatch([ours, theirs]) == (
        "rank 1 runs with other settings than rank 0 (--lr 0.002 vs 0.001); start every rank with the same settings")
    m = Model(model_cfg.native_kwargs(), backend="ref", seed=1)
    sums = distributed.weight_checksums(m)
    w = m.get("norm")
    w[3] += 1e-6
    m.set("norm", w)
    drifted = distributed.weight_checksums(m)
    assert distributed.sync_mismatch([sums, sums, sums], 7) is None
    msg = distributed.sync_mismatch([sums, sums, drifted], 7)
    assert msg.startswith("the weights differ across ranks after step 7: norm on rank 2 is not rank 0's (sum rank 0 ")


@pytest.mark.torch
@pytest.mark.slow
def test_a_rank_that_cannot_start_stops_every_rank(tmp_path):
    missing = str(tmp_path / "missing_*.bin")
    p = torchrun(*SMALL, "--steps", 2, "--out", tmp_path / "run", script=WORKER, check=False,
                 env={"ANETRAIN_TEST_RANK1_ARGS": f"--data {missing}"})
    assert p.returncode != 0
    why = f"no token shards match {missing!r}; pass --data GLOB or make shards with scripts/prepare_data.py"
    assert sorted(our_errors(p.stderr)) == [f"error: {why}", f"error: rank 1 could not start: {why}"]


@pytest.mark.torch
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_two_ranks_train_as_one_process_summing_both_ranks_windows(two_ranks, pipeline):
    out = two_ranks(pipeline)
    expected, samplers = one_process(args_for(pipeline), STEPS)
    got = losses(out)
    assert len(got) == STEPS
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    steps = records(out, "step")
    assert all(r["tokens"] == 2 * 4 * 32 and r["allreduce_ms"] > 0 and "allreduce" in r["ms"] for r in steps)
    assert sorted(os.listdir(out)) == [".anetrain.lock", "ckpt_00000010.safetensors", "ckpt_00000020.safetensors",
                                       "metrics.jsonl"]
    _, meta = checkpoint.load(checkpoint.latest(out))
    assert meta["world_size"] == 2
    assert meta["sampler"] == [json.loads(json.dumps(s.state())) for s in samplers]  # every rank's, in rank order


@pytest.mark.torch
def test_resume_under_torchrun_continues_the_uninterrupted_run(two_ranks, tmp_path):
    full, part = two_ranks("dynamic"), tmp_path / "part"
    part.mkdir()
    shutil.copy(os.path.join(full, "ckpt_00000010.safetensors"), part)
    p = torchrun(*args_for("dynamic"), "--steps", STEPS, "--out", part, "--resume")
    assert "resumed from" in p.stderr
    assert losses(part) == losses(full)[10:]  # exact, every step


@pytest.mark.torch
def test_another_number_of_ranks_resumes_only_with_reshard(two_ranks, tmp_path):
    ckpt = os.path.join(two_ranks("dynamic"), "ckpt_00000010.safetensors")
    args = [*args_for("dynamic"), "--steps", "12", "--out", str(tmp_path / "one"), "--ckpt", ckpt]
    p = train(*args, check=False)
    assert p.returncode == 2
    assert our_errors(p.stderr) == [
        f"error: {ckpt} was written by a run of 2 ranks and this run has 1; resume with 2 ranks (torchrun's "
        f"--nproc-per-node times --nnodes), or pass --reshard to go on with 1 (each rank then draws new windows; "
        f"docs/distributed.md)"]
    p = train(*args, "--reshard")
    assert "note: resharded from 2 to 1 ranks" in p.stderr
    # step 11: the checkpoint's weights on the windows of a new stream, seeded by (seed, rank, step)
    model_cfg, t = config.parse_args(args)
    arrays, _ = checkpoint.load(ckpt)
    model = Model(model_cfg.native_kwargs(), backend="ref", pipeline="dynamic", loss_scale=t.loss_scale)
    model.load_state_dict(arrays)
    splits = data.open_splits(t.data, model_cfg.vocab_size, model_cfg.seq_len, t.val_data, t.val_fraction)
    sampler = data.WindowSampler(splits.train, model_cfg.seq_len, t.seed, 0, 1, stream=10)
    assert losses(str(tmp_path / "one"))[0] == model.accumulate(sampler.batch(t.batch_size))


@pytest.mark.torch
@pytest.mark.slow
def test_exec_restarts_under_torchrun_reproduce_the_uninterrupted_run(two_ranks, tmp_path):
    out = tmp_path / "restarted"
    # 2 layers x 4 kernels = 8 compiles per static step: a budget of 16 restarts both ranks after
    # step 2 (one restart under torchrun; test_train_cli.py runs chains of them in one process)
    p = torchrun(*args_for("static"), "--steps", 4, "--compile-budget", 16, "--out", out)
    assert p.stderr.count("[restart after step") == 1, p.stderr[-3000:]  # rank 0's lines
    assert losses(out) == losses(two_ranks("static"))[:4]


@pytest.mark.torch
@pytest.mark.slow
def test_a_step_that_fails_on_one_rank_restarts_every_rank(two_ranks, tmp_path):
    out = tmp_path / "run"
    # dynamic: rank 1 fails mid-backward after two of its per-layer reductions started (overlap)
    p = torchrun(*args_for("dynamic"), "--steps", 6, "--out", out, script=WORKER, env={"ANETRAIN_TEST_FAIL_STEP": 3})
    assert ("[restart after step 3: backend failure (rank 1: evaluation failed (simulated)), retrying once; "
            "checkpoint") in p.stderr, p.stderr[-3000:]
    assert losses(out) == losses(two_ranks("dynamic"))[:6]


class Background:
    """A long 2-rank run in the background, its stderr collected by a thread, and the pids of its
    ranks; returned once it has logged 4 steps."""

    def __init__(self, tmp_path, *args):
        self.out, pids = str(tmp_path / "run"), tmp_path / "pids"
        pids.mkdir()
        self.proc = subprocess.Popen(
            torchrun_command([*SMALL, "--steps", 100000, "--ckpt-interval", 2, "--out", self.out, *args], WORKER),
            cwd=ROOT, env=clean_env(ANETRAIN_TEST_PID_DIR=pids), stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        metrics = os.path.join(self.out, "metrics.jsonl")
        deadline = time.time() + 600  # generous: a loaded 2-core machine starts processes slowly
        while time.time() < deadline and not (os.path.exists(metrics) and len(records(self.out, "step")) >= 4):
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.2)
        self.pids = [int((pids / f"rank{r}.pid").read_text()) for r in (0, 1)]

    def wait_for_error(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline and not our_errors("".join(self.lines)):
            time.sleep(0.2)

    def assert_failed_cleanly(self):
        """Rank 0 ended with one line naming the failure, and the last checkpoint loads."""
        self.proc.wait(timeout=300)
        self.reader.join(timeout=60)
        stderr = "".join(self.lines)
        assert self.proc.returncode != 0
        errors = our_errors(stderr)
        assert len(errors) == 1 and errors[0].startswith("error: rank 0: "), stderr[-3000:]
        last = checkpoint.latest(self.out)
        assert f"The last checkpoint {last} is intact; resume with --resume" in errors[0]
        _, meta = checkpoint.load(last)  # its checksum holds
        assert meta["world_size"] == 2
        assert not [f for f in os.listdir(self.out) if f.startswith(".anetrain-tmp-")]
        return errors[0]


@pytest.mark.torch
def test_a_killed_rank_ends_the_job_with_one_line_and_the_checkpoint_intact(tmp_path):
    run = Background(tmp_path, "--dist-timeout", 60)
    os.kill(run.pids[1], signal.SIGKILL)
    run.assert_failed_cleanly()


@pytest.mark.torch
@pytest.mark.slow
def test_a_hanging_rank_ends_the_job_after_the_timeout(tmp_path):
    run = Background(tmp_path, "--dist-timeout", 3)
    os.kill(run.pids[1], signal.SIGSTOP)
    try:
        run.wait_for_error()
    finally:
        os.kill(run.pids[1], signal.SIGKILL)  # torchrun would wait 30 s for a stopped process to take SIGTERM
    assert "timed out" in run.assert_failed_cleanly().lower()


@pytest.mark.torch
@pytest.mark.slow
def test_ctrl_c_on_torchrun_stops_every_rank_at_one_step_with_one_checkpoint(tmp_path):
    run = Background(tmp_path)
    run.proc.send_signal(signal.SIGINT)  # torchrun hands it on to every rank
    run.proc.wait(timeout=300)
    run.reader.join(timeout=60)
    stderr = "".join(run.lines)
    saved = re.findall(r"^interrupted: saved (\S+) at step (\d+); resume with --resume$", stderr, re.M)
    assert len(saved) == 1, stderr[-3000:]  # rank 0 speaks for the group
    path, step = saved[0][0], int(saved[0][1])
    _, meta = checkpoint.load(path)
    assert meta["step"] == step and len(meta["sampler"]) == 2
    assert records(run.out, "step")[-1]["step"] == step


@pytest.mark.torch
def test_sync_check_stops_ranks_that_drift_apart(tmp_path):
    out = tmp_path / "run"
    p = torchrun(*SMALL, "--steps", 8, "--sync-check", 2, "--ckpt-interval", 2, "--out", out, script=WORKER,
                 env={"ANETRAIN_TEST_NUDGE_STEP": 3}, check=False)
    assert p.returncode != 0
    errors = our_errors(p.stderr)
    assert len(errors) == 2, p.stderr[-3000:]  # both ranks stop, and say why
    assert all(e.startswith("error: the weights differ across ranks after step 4: layers.1.feed_forward.w2 on "
                            "rank 1 is not rank 0's") for e in errors)
    assert checkpoint.latest(str(out)).endswith("ckpt_00000002.safetensors")  # nothing saved once they differ
