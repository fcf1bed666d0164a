"""The restart policy of the training loop, in-process: a failing backend gets exactly one retry
through an exec() restart, then a clear error. os.execve is replaced so the test sees the command
the loop would run instead of being replaced by it."""
import os

import pytest

from anetrain import _native, trainer
from anetrain.model import Model

SMALL = ["--dim", "64", "--n-layers", "2", "--n-heads", "4", "--seq-len", "32", "--batch-size", "2",
         "--eval-interval", "0", "--sample-interval", "0", "--backend", "ref", "--steps", "3"]


class Exec(Exception):
    pass


def failing_run(tmp_path, monkeypatch, retry_env=None):
    calls = []

    def fake_execve(path, args, env):
        calls.append((args, env))
        raise Exec

    def broken_accumulate(self, tokens, grads_ready=None):
        raise _native.BackendError("ANE evaluation failed: status 0x1d (simulated)")

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(Model, "accumulate", broken_accumulate)
    if retry_env is None:
        monkeypatch.delenv(trainer.RETRY_ENV, raising=False)
    else:
        monkeypatch.setenv(trainer.RETRY_ENV, retry_env)
    run = trainer.Run(SMALL + ["--out", str(tmp_path)])
    return run, calls


def test_a_backend_failure_is_retried_once_through_a_restart(tmp_path, monkeypatch):
    run, calls = failing_run(tmp_path, monkeypatch)
    with pytest.raises(Exec):
        run.run()
    (args, env), = calls
    assert env[trainer.RETRY_ENV] == "0" and env[trainer.RESTARTS_ENV] == "1"
    ckpt = args[args.index("--ckpt") + 1]
    assert "--resume" in args and os.path.exists(ckpt)
    assert args[-3:] == ["--resume", "--ckpt", ckpt] and args.count("--resume") == 1


def test_a_restart_releases_the_model_directories_first(tmp_path, monkeypatch):
    model_dir = tmp_path / "0123abcd"
    model_dir.mkdir()
    _native.ane_model_dirs_register(str(tmp_path), str(model_dir))
    run, calls = failing_run(tmp_path, monkeypatch)
    closed = []
    real_close = Model.close
    monkeypatch.setattr(Model, "close", lambda self: closed.append(len(calls)) or real_close(self))
    with pytest.raises(Exec):
        run.run()
    assert closed == [0]  # every kernel freed (unloaded on the ANE) before the exec
    assert len(calls) == 1 and not model_dir.exists()
    assert not os.path.exists(_native.ane_model_registry_file(str(tmp_path)))


def test_the_same_failure_after_the_retry_is_a_clear_error(tmp_path, monkeypatch, capsys):
    run, calls = failing_run(tmp_path, monkeypatch, retry_env="0")
    with pytest.raises(trainer.RunFailed, match="step 0 failed again after a restart: ANE evaluation failed"):
        run.run()
    assert calls == []


def test_strip_resume_flags():
    assert trainer.strip_resume_flags(["--steps", "5", "--resume", "--ckpt", "a.safetensors", "--out", "x"]) == \
        ["--steps", "5", "--out", "x"]
    assert trainer.strip_resume_flags(["--ckpt=b", "--lr", "1"]) == ["--lr", "1"]
