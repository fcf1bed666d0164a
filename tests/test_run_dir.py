"""The run directory belongs to one run: reuse without --resume is refused (or archived with
--overwrite), a second process is locked out (also across exec() restarts), SIGTERM saves, a
killed writer's temporary files are removed at the next start, a resume drops the metrics of the
steps it re-runs, checkpoints get the umask's mode and a full disk is one clear line."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from anetrain import checkpoint, rundir, trainer
from test_train_cli import ROOT, SMALL, TRAIN, losses, records, train


def snapshot(out):
    """name -> bytes of every file under ``out``."""
    got = {}
    for d, _, names in os.walk(out):
        for n in names:
            p = os.path.join(d, n)
            got[os.path.relpath(p, out)] = open(p, "rb").read()
    return got


def start_background(out, *extra):
    """A long run in the background, returned once it has logged its first steps."""
    proc = subprocess.Popen([sys.executable, TRAIN, *SMALL, "--steps", "100000", "--out", out, *extra], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 600  # generous: a loaded 2-core machine starts processes slowly
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    return proc


def last_line(p):
    lines = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[-1]


def test_reusing_out_without_resume_is_refused_and_changes_nothing(tmp_path):
    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "6", "--ckpt-interval", "2", "--out", out)
    before = snapshot(out)
    p = train(*SMALL, "--steps", "3", "--out", out, check=False)
    assert p.returncode == 2
    last = last_line(p)
    assert last.startswith("error: --out ") and "already holds another run" in last
    assert "--resume" in last and "--out" in last and "--overwrite" in last
    assert snapshot(out) == before


def test_overwrite_archives_the_old_run_and_starts_fresh(tmp_path):
    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "6", "--out", out)
    old = snapshot(out)
    p = train(*SMALL, "--steps", "3", "--out", out, "--overwrite")
    assert "done: step 3" in p.stderr
    assert checkpoint.latest(out).endswith("ckpt_00000003.safetensors")  # not pruned by the old step-6 one
    assert [r["step"] for r in records(out, "step")] == [1, 2, 3]
    archives = [d for d in os.listdir(out) if d.startswith("archive-")]
    assert len(archives) == 1
    moved = snapshot(os.path.join(out, archives[0]))
    assert moved == {k: v for k, v in old.items() if k != rundir.LOCK_NAME}   # every byte kept


def test_a_second_process_on_a_locked_out_is_refused_and_sigterm_saves(tmp_path):
    out = str(tmp_path / "run")
    first = start_background(out)
    try:
        p = train(*SMALL, "--steps", "3", "--out", out, "--resume", check=False)
        assert p.returncode == 2
        assert last_line(p) == f"error: {out} is in use by another run (pid {first.pid}); wait for it to " \
                               f"finish or choose another --out"
        assert first.poll() is None  # the first one keeps going
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=600)
    assert first.returncode == 143, err
    assert "terminated: saved" in err and "resume with --resume" in err and "Traceback" not in err
    done = len(losses(out))
    assert checkpoint.latest(out).endswith(f"ckpt_{done:08d}.safetensors")
    # the lock went with the process: the directory can be resumed at once
    p = train(*SMALL, "--steps", str(done + 2), "--out", out, "--resume")
    assert f"at step {done}" in p.stderr


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path):
    out, full = str(tmp_path / "run"), str(tmp_path / "full")
    flat = ["--warmup-steps", "0", "--min-lr-ratio", "1"]  # the lr does not depend on --steps
    proc = start_background(out, *flat)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    done = len(losses(out))
    train(*SMALL, *flat, "--steps", str(done + 3), "--out", out, "--resume")
    train(*SMALL, *flat, "--steps", str(done + 3), "--out", full)
    assert losses(out) == losses(full)  # exact float equality, every step


def test_sigterm_after_an_exec_restart_saves(tmp_path):
    out = str(tmp_path / "run")
    # static: 8 compiles per step; a budget of 16 restarts every two steps
    proc = start_background(out, "--pipeline", "static", "--compile-budget", "16")
    deadline = time.time() + 600  # generous: a loaded 2-core machine starts processes slowly
    while time.time() < deadline and len(records(out, "placement")) < 2:
        time.sleep(0.2)
    assert len(records(out, "placement")) >= 2  # at least one restart happened
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    assert "terminated: saved" in err and "[restart after step" in err, err


def test_stale_temp_files_of_dead_writers_are_removed_at_start(tmp_path):
    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "2", "--out", out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(out, f"{rundir.TMP_PREFIX}{dead.pid}-ckpt_00000004.safetensors")
    live = os.path.join(out, f"{rundir.TMP_PREFIX}1-ckpt_00000004.safetensors")  # pid 1 runs
    for p in (stale, live):
        open(p, "wb").write(b"\0" * 4096)
    train(*SMALL, "--steps", "3", "--out", out, "--resume", "--keep-last", "5")
    assert not os.path.exists(stale)
    assert os.path.exists(live)


def test_a_kill_during_a_save_leaves_only_our_named_temp(tmp_path):
    out = str(tmp_path / "run")
    code = ("import os, sys\n"
            "from anetrain import trainer\n"
            "os.replace = lambda *a: os._exit(9)\n"   # die when the first checkpoint is complete on disk
            "trainer.main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", code, *SMALL, "--steps", "2", "--out", out], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    temp, lock = sorted(f for f in os.listdir(out) if f.startswith("."))
    assert lock == rundir.LOCK_NAME
    assert temp.startswith(rundir.TMP_PREFIX) and temp.endswith("-ckpt_00000002.safetensors")
    assert os.path.getsize(os.path.join(out, temp)) > 0 and checkpoint.latest(out) is None
    train(*SMALL, "--steps", "2", "--out", out, "--resume")
    assert sorted(f for f in os.listdir(out) if f.startswith(".")) == [rundir.LOCK_NAME]


def test_metrics_after_a_crash_and_resume_hold_each_step_once(tmp_path):
    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "8", "--ckpt-interval", "4", "--keep-last", "5", "--out", out)
    # a crash after step 6: the step-8 checkpoint never happened, the log went on past step 4's
    os.unlink(os.path.join(out, "ckpt_00000008.safetensors"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = f.readlines()
    keep = [ln for ln in lines if '"step": 7' not in ln and '"step": 8' not in ln]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(keep + ['{"time": 1, "step": 7, "lo'])   # and a torn last line
    p = train(*SMALL, "--steps", "8", "--out", out, "--resume")
    assert "at step 4" in p.stderr and "dropped 3 records after step 4" in p.stderr
    assert [r["step"] for r in records(out, "step")] == list(range(1, 9))


def test_checkpoint_mode_follows_the_umask(tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.run(["sh", "-c", f'umask 022 && exec "{sys.executable}" "{TRAIN}" "$@"', "sh", *SMALL,
                        "--steps", "1", "--out", out], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert os.stat(checkpoint.latest(out)).st_mode & 0o777 == 0o644


def test_the_lock_is_handed_over_through_exec(tmp_path, monkeypatch):
    """What os.execve does to the lock, done by hand: the fd the restart hands over, passed to a
    new process with the environment the restart sets, is that process's lock; a process
    without it is refused while the handover is under way."""
    out = str(tmp_path)
    monkeypatch.delenv(rundir.LOCK_ENV, raising=False)
    lock = rundir.RunLock(out)
    env = {**os.environ, **lock.handover()}
    fd = int(env[rundir.LOCK_ENV])
    assert os.get_inheritable(fd)
    take = ("import sys\nfrom anetrain import rundir\nfrom anetrain.errors import UsageError\n"
            "try:\n    rundir.RunLock(sys.argv[1])\nexcept UsageError as e:\n    print(e); sys.exit(2)\n")
    run = [sys.executable, "-c", take, out]
    heir = subprocess.run(run, env=env, pass_fds=(fd,), cwd=ROOT, capture_output=True, text=True)
    assert heir.returncode == 0, heir.stdout + heir.stderr
    other = subprocess.run(run, env={k: v for k, v in env.items() if k != rundir.LOCK_ENV}, cwd=ROOT,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "in use by another run" in other.stdout
    lock.release()


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    real = checkpoint.write_safetensors
    calls = []

    def fill_the_disk(f, arrays, metadata):
        calls.append(1)
        if len(calls) == 1:
            return real(f, arrays, metadata)
        f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "write_safetensors", fill_the_disk)
    monkeypatch.delenv(trainer.RETRY_ENV, raising=False)
    rc = trainer.main(SMALL + ["--steps", "3", "--ckpt-interval", "2", "--out", out])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the disk is full") and "ckpt_00000002.safetensors is intact" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert sorted(os.listdir(out)) == [rundir.LOCK_NAME, "ckpt_00000002.safetensors", "metrics.jsonl"]
    checkpoint.load(os.path.join(out, "ckpt_00000002.safetensors"))


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path):
    out = str(tmp_path / "run")
    train(*SMALL, "--steps", "6", "--ckpt-interval", "2", "--keep-last", "3", "--out", out)
    first = {checkpoint.step_of(p): open(p, "rb").read() for p in checkpoint.list_checkpoints(out)}
    assert sorted(first) == [2, 4, 6]
    p = train(*SMALL, "--steps", "5", "--ckpt-interval", "1", "--keep-last", "3", "--out", out, "--resume",
              "--ckpt", checkpoint.step_path(out, 2))
    assert "at step 2" in p.stderr and "moved 2 checkpoint(s) past step 2" in p.stderr
    # the new run's checkpoints are the newest: pruning kept them, and a plain --resume takes them
    assert [checkpoint.step_of(c) for c in checkpoint.list_checkpoints(out)] == [3, 4, 5]
    assert checkpoint.latest(out) == checkpoint.step_path(out, 5)
    (archived,) = [d for d in os.listdir(out) if d.startswith("archive-")]
    moved = os.path.join(out, archived)
    assert {checkpoint.step_of(f): open(os.path.join(moved, f), "rb").read() for f in os.listdir(moved)} == \
        {4: first[4], 6: first[6]}
    assert [r["step"] for r in records(out, "step")] == [1, 2, 3, 4, 5]


def test_step_of_reads_the_conventional_names():
    assert checkpoint.step_of(checkpoint.step_path("/x", 12)) == 12
    assert checkpoint.step_of("/x/ckpt_latest.safetensors") is None and checkpoint.step_of("model.bin") is None
