"""Token shards on disk, the train/validation split, and seeded sampling of training windows.

Shard format
------------
A shard is a flat file of little-endian token ids with no header, exactly llama2.c's pretokenized
``.bin`` files. The id type is uint16, unless a sidecar JSON file named ``<shard>.json`` says
otherwise::

    {"format": "anetrain-tokens", "version": 1, "dtype": "uint32", "n_tokens": 1234, "vocab_size": 151936}

``write_shard`` writes uint16 for vocabularies up to 65,535 ids and uint32 above that, always with
a sidecar; a shard without a sidecar (e.g. llama2.c's TinyStories ``data00.bin``) is read as uint16.
When the sidecar gives ``n_tokens`` the file size must match it, which catches truncated copies.

Split and sampling
------------------
``open_splits`` maps every shard matching a glob read-only and checks it once (size, ids < vocab,
vectorised). Validation data is either separate shards (``val_data`` glob) or, when none is given,
the last ``val_fraction`` of every training shard, so the split depends only on the files.
A training window is ``seq_len + 1`` consecutive tokens (inputs and shifted targets); windows may
cross document boundaries, as in llama2.c. ``WindowSampler`` draws window starts uniformly over all
windows of all shards from a seeded NumPy ``Generator`` whose state is exported and restored
exactly, so a resumed run sees the same batches it would have seen without stopping.

Data parallel: rank ``r`` of ``W`` ranks draws only the windows whose index (over all windows of
all parts, in order) is ``r`` modulo ``W``, from a generator seeded by ``(seed, r)``. No two ranks
ever draw the same window, each rank's batches depend only on the seed, its rank and the world
size, and a single process can draw exactly the windows of every rank by making the W samplers
itself (what the equality test of tests/test_distributed.py does).
"""
import glob as _glob
import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import DataError

SIDECAR_FORMAT = "anetrain-tokens"
SIDECAR_VERSION = 1
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype_for_vocab(vocab_size):
    """The narrowest shard id type that holds every id of a vocabulary of ``vocab_size``."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def sidecar_path(shard_path):
    return str(shard_path) + ".json"


def write_shard(path, tokens, vocab_size):
    """Write token ids as a shard plus its sidecar JSON; returns the number of tokens written."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise DataError(f"{path}: token ids must lie in [0, {vocab_size}); got "
                        f"[{tokens.min()}, {tokens.max()}]; check the tokenizer's vocabulary size")
    name = token_dtype_for_vocab(vocab_size)
    with open(path, "wb") as f:
        f.write(tokens.astype(_DTYPES[name]).tobytes())
    _write_sidecar(path, name, tokens.size, vocab_size)
    return int(tokens.size)


def _write_sidecar(path, dtype_name, n_tokens, vocab_size):
    meta = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "dtype": dtype_name,
            "n_tokens": int(n_tokens), "vocab_size": int(vocab_size)}
    with open(sidecar_path(path), "w") as f:
        json.dump(meta, f)
        f.write("\n")


class ShardWriter:
    """Streams token ids into ``<prefix>_000.bin``, ``<prefix>_001.bin``, ... of at most
    ``shard_tokens`` tokens each (with sidecars), so a large corpus never sits in memory."""

    def __init__(self, out_dir, prefix, vocab_size, shard_tokens):
        self.out_dir, self.prefix, self.vocab_size = out_dir, prefix, vocab_size
        self.shard_tokens = shard_tokens
        self.dtype_name = token_dtype_for_vocab(vocab_size)
        self.paths, self.file, self.n_in_file = [], None, 0

    def add(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise DataError(f"token ids must lie in [0, {self.vocab_size}); got [{ids.min()}, {ids.max()}]")
        while ids.size:
            if self.file is None or self.n_in_file == self.shard_tokens:
                self._next_file()
            take = ids[:self.shard_tokens - self.n_in_file]
            self.file.write(take.astype(_DTYPES[self.dtype_name]).tobytes())
            self.n_in_file += take.size
            ids = ids[take.size:]

    def _next_file(self):
        self._finish_file()
        path = os.path.join(self.out_dir, f"{self.prefix}_{len(self.paths):03d}.bin")
        self.paths.append(path)
        self.file, self.n_in_file = open(path, "wb"), 0

    def _finish_file(self):
        if self.file is not None:
            self.file.close()
            _write_sidecar(self.paths[-1], self.dtype_name, self.n_in_file, self.vocab_size)
            self.file = None

    def close(self):
        """Finish the last shard; returns the paths written."""
        self._finish_file()
        return self.paths


def _read_sidecar(path):
    side = sidecar_path(path)
    if not os.path.exists(side):
        return {}
    try:
        with open(side) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{side}: unreadable shard sidecar ({e}); delete it to read the shard as uint16")
    if meta.get("format") != SIDECAR_FORMAT or meta.get("dtype") not in _DTYPES:
        raise DataError(f"{side}: not an anetrain token sidecar (need format {SIDECAR_FORMAT!r} and "
                        f"dtype uint16 or uint32)")
    return meta


def open_shard(path, vocab_size):
    """Map one shard read-only and validate it; returns a 1-D little-endian integer array."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a token shard; pass a glob of shard files such as "
                        f"{os.path.join(path, 'train_*.bin')}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: token shard not found")
    meta = _read_sidecar(path)
    if not meta and looks_like_text(path):
        raise DataError(f"{path}: looks like text, not token ids (no {os.path.basename(sidecar_path(path))} "
                        f"sidecar and its bytes read as text); make shards from it with scripts/prepare_data.py")
    dtype = _DTYPES[meta.get("dtype", "uint16")]
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path}: token shard is empty (0 bytes); regenerate it with scripts/prepare_data.py")
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype.itemsize}-byte tokens; "
                        f"the file is truncated or not a token shard")
    n = size // dtype.itemsize
    if "n_tokens" in meta and meta["n_tokens"] != n:
        raise DataError(f"{path}: holds {n} tokens but its sidecar says {meta['n_tokens']}; "
                        f"the file is truncated or was replaced")
    if meta.get("vocab_size", 0) > vocab_size:
        raise DataError(f"{path}: made with a {meta['vocab_size']}-piece tokenizer, more than the "
                        f"model's vocab size {vocab_size}; use the model's tokenizer or a larger vocab")
    tokens = np.memmap(path, dtype=dtype, mode="r")
    check_ids(path, tokens, vocab_size)
    return tokens


def looks_like_text(path, probe=1 << 16):
    """Whether a file's first ``probe`` bytes decode as UTF-8 text without control characters.
    Token ids almost never do: every id below 256 puts a NUL byte in the file, and ids in a real
    vocabulary's low ranges put bytes below 0x20 in the high half of most tokens."""
    with open(path, "rb") as f:
        head = f.read(probe)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut off by the probe's end
            return False
        text = head[:e.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\n\r\f\v" for c in text)


def check_ids(path, tokens, vocab_size):
    """Raise DataError naming the first id >= vocab_size, if any (one vectorised pass)."""
    bad = np.flatnonzero(tokens >= vocab_size)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: token id {int(tokens[i])} at position {i} is >= the vocab size "
                        f"{vocab_size}; the shard was made with another tokenizer or the model "
                        f"config is wrong")


def find_shards(pattern):
    """Sorted paths matching a glob (``~`` expanded); DataError when none match."""
    paths = sorted(p for p in _glob.glob(os.path.expanduser(pattern)) if not p.endswith(".json"))
    if not paths:
        raise DataError(f"no token shards match {pattern!r}; pass --data GLOB or make shards with "
                        f"scripts/prepare_data.py")
    return paths


@dataclass
class Part:
    """A contiguous run of tokens from one shard (the whole shard, or its train or val side)."""
    path: str
    tokens: np.ndarray


@dataclass
class Splits:
    train: list
    val: list


def open_splits(data, vocab_size, seq_len, val_data=None, val_fraction=0.05):
    """Open the training shards (glob ``data``) and the validation side, validated.

    Validation is the shards matching ``val_data`` if given, else the last ``val_fraction`` of
    every training shard (rounded to whole tokens). DataError when no window of ``seq_len + 1``
    tokens fits in the training side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    shards = [Part(p, open_shard(p, vocab_size)) for p in find_shards(data)]
    if val_data:
        train = shards
        val = [Part(p, open_shard(p, vocab_size)) for p in find_shards(val_data)]
    else:
        train, val = [], []
        for s in shards:
            n_val = int(round(len(s.tokens) * val_fraction))
            cut = len(s.tokens) - n_val
            train.append(Part(s.path, s.tokens[:cut]))
            if n_val:
                val.append(Part(s.path, s.tokens[cut:]))
    window = seq_len + 1
    if not any(len(p.tokens) >= window for p in train):
        longest = max(len(p.tokens) for p in train)
        if val_data or not val_fraction:
            raise DataError(f"{data}: the longest training shard holds {longest} tokens, too few for "
                            f"one window of seq_len+1 = {window}; use more data or a shorter sequence")
        raise DataError(f"{data}: once the last {val_fraction:g} of each shard is held out for validation, the "
                        f"longest training part holds {longest} tokens, too few for one window of seq_len+1 = "
                        f"{window}; pass --val-data GLOB, a smaller --val-fraction, more data or a shorter sequence")
    # Validation that was asked for but holds no window would silently never run.
    if val_data and not any(len(p.tokens) >= window for p in val):
        raise DataError(f"{val_data}: the validation shards hold at most {max(len(p.tokens) for p in val)} "
                        f"tokens, too few for one window of seq_len+1 = {window}; use longer validation "
                        f"shards or drop --val-data")
    if val_fraction and not val_data and not any(len(p.tokens) >= window for p in val):
        longest = max((len(p.tokens) for p in val), default=0)
        raise DataError(f"{data}: the last {val_fraction:g} of each shard, held out for validation, is at most "
                        f"{longest} tokens, too few for one window of seq_len+1 = {window}; raise --val-fraction, "
                        f"pass --val-data GLOB, or --val-fraction 0 to train without validation")
    return Splits(train=train, val=val)


def _window_counts(parts, seq_len):
    return np.array([max(0, len(p.tokens) - seq_len) for p in parts], dtype=np.int64)


def _gather(parts, starts_by_part, seq_len):
    out = np.empty((len(starts_by_part), seq_len + 1), dtype=np.int32)
    for row, (k, s) in enumerate(starts_by_part):
        out[row] = parts[k].tokens[s:s + seq_len + 1]
    return out


def _locate(counts, flat_index):
    """Map indices over all windows of all parts to (part, start) pairs."""
    ends = np.cumsum(counts)
    part = np.searchsorted(ends, flat_index, side="right")
    start = flat_index - (ends[part] - counts[part])
    return list(zip(part.tolist(), start.tolist()))


class WindowSampler:
    """Uniformly random windows of ``seq_len + 1`` tokens over a list of Parts, reproducibly.

    ``rank`` of ``world``: the data-parallel rank's share (module docstring), from a generator
    seeded by ``(seed, rank)``; a single process (world 1) seeds by ``seed`` alone. ``stream``
    starts a further independent stream, seeded by ``(seed, rank, stream)``: a resume with
    another world size (``--reshard``) starts one per rank, numbered by the step."""

    def __init__(self, parts, seq_len, seed, rank=0, world=1, stream=None):
        self.parts = parts
        self.seq_len = seq_len
        self.counts = _window_counts(parts, seq_len)
        self.total = int(self.counts.sum())
        if self.total == 0:
            raise DataError(f"no shard has seq_len+1 = {seq_len + 1} tokens; use more data or a "
                            f"shorter sequence")
        if self.total < world:
            raise DataError(f"the training data holds {self.total} windows of seq_len+1 = {seq_len + 1} tokens, "
                            f"fewer than the {world} ranks; use more data or fewer ranks")
        self.rank, self.world = rank, world
        self.share = (self.total - rank + world - 1) // world  # windows with index = rank (mod world)
        if world == 1 and stream is None:
            entropy = seed
        else:
            entropy = [seed, rank] + ([] if stream is None else [stream])
        self.rng = np.random.Generator(np.random.PCG64(entropy))

    def batch(self, batch_size):
        """An int32 array [batch_size, seq_len + 1]: inputs are [:, :-1], targets [:, 1:]."""
        flat = self.rank + self.world * self.rng.integers(0, self.share, size=batch_size)
        return _gather(self.parts, _locate(self.counts, flat), self.seq_len)

    def state(self):
        """JSON-serialisable generator state; ``set_state`` of it replays the same batches."""
        return self.rng.bit_generator.state

    def set_state(self, state):
        try:
            self.rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as e:
            raise DataError(f"saved sampler state does not fit a PCG64 generator ({e}); start "
                            f"without --resume or use a checkpoint written by anetrain")


def eval_windows(parts, seq_len, n_windows):
    """``n_windows`` evenly spaced windows over all parts, int32 [n, seq_len + 1], the same every call.

    Returns an empty [0, seq_len + 1] array when the parts hold no full window.
    """
    counts = _window_counts(parts, seq_len)
    total = int(counts.sum())
    if total == 0 or n_windows <= 0:
        return np.empty((0, seq_len + 1), dtype=np.int32)
    n = min(n_windows, total)
    flat = (np.arange(n, dtype=np.int64) * total) // n
    return _gather(parts, _locate(counts, flat), seq_len)
