"""Checkpoints: round trip, pruning, atomicity under a real crash, and every corrupt or mismatched
file giving a one-line CheckpointError that names the file."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from anetrain import checkpoint, rundir
from anetrain.checkpoint import latest, load, save, step_path
from anetrain.config import model_preset
from anetrain.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample_state(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"tok_embeddings.weight": rng.standard_normal((16, 8)).astype(np.float32),
              "adam.m.norm.weight": rng.standard_normal(8).astype(np.float32),
              "losses": np.array([5.5, 4.25], dtype=np.float64),
              "counts": np.arange(6, dtype=np.int32).reshape(2, 3)}
    meta = {"config": model_preset("tiny").to_dict(), "step": 10 + seed,
            "sampler": np.random.Generator(np.random.PCG64(seed)).bit_generator.state,
            "loss_history": [9.0, 7.5], "np_scalar": np.int64(3)}
    return arrays, meta


def error_of(path, **kw):
    with pytest.raises(CheckpointError) as e:
        load(str(path), **kw)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_round_trip(tmp_path):
    arrays, meta = sample_state()
    p = step_path(str(tmp_path), 10)
    save(p, arrays, meta)
    got, m = load(p, expect_config=model_preset("tiny").to_dict())
    assert set(got) == set(arrays)
    for k in arrays:
        assert got[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(got[k], arrays[k])
    assert m["step"] == 10 and m["sampler"] == meta["sampler"] and m["np_scalar"] == 3
    g = np.random.Generator(np.random.PCG64(99))
    g.bit_generator.state = m["sampler"]          # big PCG64 integers survive the JSON round trip
    assert g.integers(0, 2**62) == np.random.Generator(np.random.PCG64(0)).integers(0, 2**62)


def test_file_is_plain_safetensors_with_magic(tmp_path):
    from safetensors import safe_open
    arrays, meta = sample_state()
    p = str(tmp_path / "c.safetensors")
    save(p, arrays, meta)
    raw = open(p, "rb").read()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["magic"] == "anetrain-checkpoint"
    assert header["__metadata__"]["format_version"] == "1"
    assert header["tok_embeddings.weight"]["dtype"] == "F32" and header["tok_embeddings.weight"]["shape"] == [16, 8]
    with safe_open(p, framework="numpy") as f:
        for k in arrays:   # every dtype read back by safetensors' own reader
            np.testing.assert_array_equal(f.get_tensor(k), arrays[k])


def test_file_mode_follows_the_umask(tmp_path):
    arrays, meta = sample_state()
    old = os.umask(0o022)
    try:
        save(str(tmp_path / "a.safetensors"), arrays, meta)
        os.umask(0o077)
        save(str(tmp_path / "b.safetensors"), arrays, meta)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.safetensors").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "b.safetensors").st_mode & 0o777 == 0o600


def test_keep_last_and_latest(tmp_path):
    assert latest(str(tmp_path)) is None
    for step in (5, 10, 15, 20, 100):
        arrays, meta = sample_state(step)
        save(step_path(str(tmp_path), step), arrays, meta, keep_last=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt_00000020.safetensors", "ckpt_00000100.safetensors"]
    assert latest(str(tmp_path)) == step_path(str(tmp_path), 100)
    assert load(latest(str(tmp_path)))[1]["step"] == 110


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    """A real process death after the new file's bytes are written but before the rename."""
    arrays, meta = sample_state(0)
    p = step_path(str(tmp_path), 10)
    save(p, arrays, meta)
    before = open(p, "rb").read()
    code = (
        "import os, sys, numpy as np\n"
        "from anetrain import checkpoint\n"
        "os.replace = lambda *a: os._exit(9)\n"        # die at the rename
        "checkpoint.save(sys.argv[1], {'w': np.ones(1000, np.float32)}, {'step': 99})\n")
    r = subprocess.run([sys.executable, "-c", code, p], cwd=ROOT, capture_output=True)
    assert r.returncode == 9
    assert open(p, "rb").read() == before and load(p)[1]["step"] == 10
    assert latest(str(tmp_path)) == p                  # the leftover temp file is not a checkpoint
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(rundir.TMP_PREFIX)]
    assert len(leftovers) == 1 and leftovers[0].endswith("-ckpt_00000010.safetensors")   # named for the dead writer and its target
    save(step_path(str(tmp_path), 20), arrays, meta, keep_last=3)   # pruning clears it (its writer is gone)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(rundir.TMP_PREFIX)]


def test_failed_write_leaves_no_temp(tmp_path, monkeypatch):
    def boom(f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint, "write_safetensors", boom)
    with pytest.raises(OSError):
        save(str(tmp_path / "c.safetensors"), {"w": np.ones(3, np.float32)}, {})
    assert os.listdir(tmp_path) == []


def test_truncated(tmp_path):
    arrays, meta = sample_state()
    p = tmp_path / "c.safetensors"
    save(str(p), arrays, meta)
    data = p.read_bytes()
    for cut in (len(data) - 7, len(data) // 2, 20, 4, 0):
        p.write_bytes(data[:cut])
        assert "unreadable checkpoint" in error_of(p)


def test_flipped_tensor_byte(tmp_path):
    arrays, meta = sample_state()
    p = tmp_path / "c.safetensors"
    save(str(p), arrays, meta)
    data = bytearray(p.read_bytes())
    data[-30] ^= 0x10
    p.write_bytes(bytes(data))
    assert "checksum mismatch" in error_of(p)


def test_keep_returns_some_tensors_and_still_checks_all(tmp_path):
    arrays, meta = sample_state()
    p = tmp_path / "c.safetensors"
    save(str(p), arrays, meta)
    got, m = load(str(p), keep="adam.")
    assert list(got) == ["adam.m.norm.weight"] and m["step"] == 10
    np.testing.assert_array_equal(got["adam.m.norm.weight"], arrays["adam.m.norm.weight"])
    data = bytearray(p.read_bytes())
    data[-30] ^= 0x10  # in the last tensor by name ("tok_embeddings.weight"), which is not kept
    p.write_bytes(bytes(data))
    assert "checksum mismatch" in error_of(p, keep="adam.")


def test_edited_metadata(tmp_path):
    arrays, meta = sample_state()
    p = tmp_path / "c.safetensors"
    save(str(p), arrays, meta)
    data = p.read_bytes()
    assert data.count(b'\\"step\\": 10') == 1
    p.write_bytes(data.replace(b'\\"step\\": 10', b'\\"step\\": 90'))   # same length, valid JSON
    assert "checksum mismatch" in error_of(p)


def test_not_a_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "plain.safetensors"
    save_file({"w": np.ones(2, np.float32)}, str(p))
    assert "not an anetrain checkpoint" in error_of(p)
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(b"hello world, not a checkpoint at all" * 10)
    assert "unreadable" in error_of(g)
    assert "no such checkpoint" in error_of(tmp_path / "missing.safetensors")


def test_newer_format_version(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "future.safetensors"
    save_file({"w": np.ones(2, np.float32)}, str(p),
              metadata={"magic": "anetrain-checkpoint", "format_version": "7", "meta": "{}", "sha256": ""})
    assert "format version 7 is newer" in error_of(p)


def test_a_checkpoint_from_before_head_dim_and_qk_norm_loads_with_their_defaults(tmp_path):
    arrays, meta = sample_state()
    for field in ("head_dim", "qk_norm", "tie_embeddings"):  # what older anetrain wrote
        del meta["config"][field]
    p = tmp_path / "old.safetensors"
    save(str(p), arrays, meta)
    load(str(p), expect_config=model_preset("tiny").to_dict())
    qwen_like = dict(model_preset("tiny").to_dict(), qk_norm=True, head_dim=64)
    msg = error_of(p, expect_config=qwen_like)
    assert "head_dim 32 vs 64" in msg and "qk_norm False vs True" in msg


def test_config_mismatch_names_the_fields(tmp_path):
    arrays, meta = sample_state()
    p = tmp_path / "c.safetensors"
    save(str(p), arrays, meta)
    msg = error_of(p, expect_config=model_preset("stories15M").to_dict())
    assert "dim 128 vs 288" in msg and "n_layers 4 vs 6" in msg
