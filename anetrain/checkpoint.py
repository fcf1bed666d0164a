"""Training checkpoints: versioned, self-describing, checksummed, written atomically, last N kept.

File format: a safetensors file (8-byte header length, JSON header, raw little-endian tensor data;
readable by any safetensors reader). Its ``__metadata__`` holds four strings:

- ``magic``: "anetrain-checkpoint"
- ``format_version``: "1"
- ``meta``: the caller's metadata as canonical JSON (config, step, sampler and RNG state, loss
  history, ...)
- ``sha256``: hex digest over the meta JSON and, for every tensor in name order, its name, dtype,
  shape and bytes; any flipped bit in the tensors or the metadata fails the check on load.

``save`` writes the file itself, tensor by tensor, through ``rundir.write_atomically`` (a temporary
file named for this process, so the next start removes what a kill mid-write leaves; fsync; rename
over the destination; fsync of the directory), so a crash at any moment leaves either the previous
file or the complete new one. It does not use safetensors' own writer: that one makes its temporary file itself, under a
random name nothing could attribute to a dead process, and with mode 0600 whatever the umask.
``load`` reads the file itself too, tensor by tensor into arrays of their own: safetensors' reader
maps the file, and every page it touches stays in the process's memory until the end.
Files are named ``ckpt_<step:08d>.safetensors`` by ``step_path`` and ``keep_last`` prunes the
oldest of them.
"""
import glob
import hashlib
import json
import math
import os
import struct

import numpy as np

from . import config, rundir
from .errors import AnetrainError, CheckpointError

MAGIC = "anetrain-checkpoint"
FORMAT_VERSION = 1
PREFIX, SUFFIX = "ckpt_", ".safetensors"
# numpy dtype -> safetensors dtype name
DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
          "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16",
          "uint8": "U8", "bool": "BOOL"}


def step_path(run_dir, step):
    """The conventional checkpoint path for ``step`` in ``run_dir``."""
    return os.path.join(run_dir, f"{PREFIX}{step:08d}{SUFFIX}")


def list_checkpoints(run_dir):
    """Checkpoint paths in ``run_dir``, oldest first (names sort by step)."""
    return sorted(glob.glob(os.path.join(glob.escape(run_dir), f"{PREFIX}*{SUFFIX}")))


def step_of(path):
    """The step a ``step_path`` name stands for (``ckpt_00000012.safetensors`` -> 12), else None."""
    name = os.path.basename(path)
    digits = name[len(PREFIX):-len(SUFFIX)] if name.startswith(PREFIX) and name.endswith(SUFFIX) else ""
    return int(digits) if digits.isdigit() else None


def latest(run_dir):
    """The newest checkpoint in ``run_dir``, or None when it holds none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"checkpoint metadata cannot hold {type(x).__name__}")


def content_digest(arrays, meta_json):
    """sha256 over the metadata JSON and every tensor's name, dtype, shape and bytes, by name."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(arrays):
        _digest_tensor(h, name, arrays[name])
    return h.hexdigest()


def _digest_tensor(h, name, a):
    a = np.ascontiguousarray(a)
    h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode("utf-8"))
    h.update(a.reshape(-1).view(np.uint8))


def write_safetensors(f, arrays, metadata):
    """Write ``arrays`` (name -> ndarray) and the string dict ``metadata`` to the binary file ``f``
    in the safetensors layout: header length (u64 LE), JSON header padded with spaces to 8 bytes,
    then each tensor's little-endian bytes in name order."""
    names = sorted(arrays)
    data = [np.ascontiguousarray(arrays[k]).astype(arrays[k].dtype.newbyteorder("<"), copy=False) for k in names]
    header, offset = {"__metadata__": metadata}, 0
    for name, a in zip(names, data):
        if a.dtype.name not in DTYPES:
            raise TypeError(f"checkpoint tensor {name} has dtype {a.dtype}, which safetensors cannot hold")
        header[name] = {"dtype": DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    f.write(struct.pack("<Q", len(text)) + text)
    for a in data:
        f.write(memoryview(a.reshape(-1).view(np.uint8)))


def save(path, arrays, meta, keep_last=None):
    """Write ``arrays`` (name -> ndarray) and JSON-able ``meta`` to ``path`` atomically, with the
    mode the process umask gives a new file.

    With ``keep_last`` N, afterwards only the newest N ``ckpt_*`` files of that directory remain.
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
    header = {"magic": MAGIC, "format_version": str(FORMAT_VERSION), "meta": meta_json,
              "sha256": content_digest(arrays, meta_json)}
    rundir.write_atomically(path, lambda f: write_safetensors(f, arrays, header))
    if keep_last is not None:
        prune(d, keep_last)


def prune(run_dir, keep_last):
    """Delete all but the newest ``keep_last`` checkpoints, and temp files of interrupted writes."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        os.unlink(old)
    rundir.remove_stale_temps(run_dir)


class _Unreadable(Exception):
    """What makes a file unreadable as safetensors (becomes a CheckpointError naming the file)."""


def _layout(f, size):
    """(metadata, {name: (dtype, shape, start, end)} with absolute byte offsets) of the open
    safetensors file ``f`` of ``size`` bytes, every field checked against the file."""
    if size < 8:
        raise _Unreadable(f"{size} bytes is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise _Unreadable(f"the header claims {n} bytes, more than the file holds")
    try:
        header = json.loads(f.read(n))
    except ValueError as e:
        raise _Unreadable(f"the header is not JSON ({e})")
    if not isinstance(header, dict):
        raise _Unreadable("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    names = {v: k for k, v in DTYPES.items()}
    tensors = {}
    for name, t in header.items():
        try:
            dtype = np.dtype(names[t["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in t["shape"])
            start, end = (int(o) for o in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _Unreadable(f"tensor {name!r} has a malformed entry")
        want = dtype.itemsize * math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= start <= end <= size - 8 - n or end - start != want:
            raise _Unreadable(f"tensor {name!r} does not fit the file (truncated?)")
        tensors[name] = (dtype, shape, 8 + n + start, 8 + n + end)
    return meta, tensors


def _read(path, keep):
    """(metadata, the tensors whose name starts with ``keep``, the sha256 ``save`` makes). The
    tensors are read one at a time in name order, each into an array of its own (no memory map,
    whose pages would stay in this process's memory), so those left out cost one tensor's memory."""
    try:
        with open(path, "rb", buffering=0) as f:
            meta, tensors = _layout(f, os.fstat(f.fileno()).st_size)
            h = hashlib.sha256(str(meta.get("meta", "")).encode("utf-8"))
            arrays = {}
            for name in sorted(tensors):
                dtype, shape, start, end = tensors[name]
                a = np.empty(shape, dtype)
                f.seek(start)
                if f.readinto(memoryview(a.reshape(-1).view(np.uint8))) != end - start:
                    raise _Unreadable(f"tensor {name!r} is cut short")
                _digest_tensor(h, name, a)
                if name.startswith(keep):
                    arrays[name] = a
    except (_Unreadable, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not safetensors: {e}); "
                              f"resume from an older one with --ckpt")
    return meta, arrays, h.hexdigest()


def _completed(saved):
    """A saved model config with the fields it predates at their defaults, resolved as a
    ModelConfig resolves them (a checkpoint from before head_dim has dim / n_heads heads, no
    QK-norm and a tied classifier); the saved dict as it is when it is no valid config."""
    try:
        return config.ModelConfig(**{k: v for k, v in saved.items() if k in config.MODEL_FIELDS}).to_dict()
    except (AnetrainError, TypeError):
        return saved


def _config_mismatch(saved, expect):
    saved = _completed(saved)
    diffs = [f"{k} {saved.get(k)} vs {v}" for k, v in expect.items()
             if k != "name" and saved.get(k) != v]
    return ", ".join(diffs)


def load(path, expect_config=None, keep=""):
    """(arrays, meta) from a checkpoint written by ``save``; CheckpointError naming the file and
    the problem when it is missing, truncated, corrupt, of another format or version, or (with
    ``expect_config``, a model config dict) written for a different model shape. ``keep``: only
    the tensors whose names start with it are returned (e.g. "weight:"), the rest only checked."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint; check --ckpt/--out or start without --resume")
    header, arrays, digest = _read(path, keep)
    if header.get("magic") != MAGIC:
        raise CheckpointError(f"{path}: not an anetrain checkpoint (no {MAGIC!r} magic)")
    try:
        version = int(header.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: bad format_version {header.get('format_version')!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this anetrain reads "
                              f"({FORMAT_VERSION}); upgrade anetrain")
    meta_json = header.get("meta", "")
    if digest != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt; resume from an "
                              f"older checkpoint with --ckpt")
    meta = json.loads(meta_json)
    if expect_config is not None:
        diff = _config_mismatch(meta.get("config", {}), expect_config)
        if diff:
            raise CheckpointError(f"{path}: written for another model ({diff} requested); pass the "
                                  f"matching --preset or use a new --out")
    return arrays, meta
