"""Token shards, split, sampler (exact resume), every bad-input error, prepare_data and the shipped
corpus (deterministic regeneration, size, BOS per story)."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from anetrain import config, data
from anetrain.data import WindowSampler, eval_windows, open_shard, open_splits, write_shard
from anetrain.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raw_uint16(path, values):
    with open(path, "wb") as f:
        f.write(struct.pack(f"<{len(values)}H", *values))


def test_write_shard_bytes_uint16(tmp_path):
    p = str(tmp_path / "a.bin")
    assert write_shard(p, [1, 2, 513, 65000], vocab_size=65535) == 4
    assert open(p, "rb").read() == struct.pack("<4H", 1, 2, 513, 65000)
    side = json.load(open(p + ".json"))
    assert side["dtype"] == "uint16" and side["n_tokens"] == 4
    assert open_shard(p, 65535).tolist() == [1, 2, 513, 65000]


def test_write_shard_bytes_uint32_for_large_vocab(tmp_path):
    p = str(tmp_path / "a.bin")
    write_shard(p, [1, 151000, 70000], vocab_size=151936)
    assert open(p, "rb").read() == struct.pack("<3I", 1, 151000, 70000)
    assert json.load(open(p + ".json"))["dtype"] == "uint32"
    assert open_shard(p, 151936).tolist() == [1, 151000, 70000]


def test_shard_writer_rolls_files(tmp_path):
    w = data.ShardWriter(str(tmp_path), "train", vocab_size=100, shard_tokens=4)
    for chunk in ([1, 2, 3], [4, 5, 6, 7, 8, 9], [10]):
        w.add(chunk)
    paths = w.close()
    assert [os.path.basename(p) for p in paths] == ["train_000.bin", "train_001.bin", "train_002.bin"]
    assert [open(p, "rb").read() for p in paths] == [struct.pack("<4H", 1, 2, 3, 4),
                                                     struct.pack("<4H", 5, 6, 7, 8),
                                                     struct.pack("<2H", 9, 10)]
    assert [json.load(open(p + ".json"))["n_tokens"] for p in paths] == [4, 4, 2]
    with pytest.raises(DataError, match=r"\[0, 100\)"):
        data.ShardWriter(str(tmp_path), "x", 100, 4).add([5, 100])


def test_llama2c_shard_without_sidecar_is_uint16(tmp_path):
    p = str(tmp_path / "data00.bin")
    raw_uint16(p, [1, 300, 31999])
    t = open_shard(p, 32000)
    assert t.dtype == np.dtype("<u2") and t.tolist() == [1, 300, 31999]


def error_of(fn, *a, **k):
    with pytest.raises(DataError) as e:
        fn(*a, **k)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_shards_each_give_one_line(tmp_path):
    assert "no token shards match" in error_of(open_splits, str(tmp_path / "*.bin"), 100, 4)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert "empty" in error_of(open_shard, str(empty), 100) and str(empty) in error_of(open_shard, str(empty), 100)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    assert "not a whole number of 2-byte tokens" in error_of(open_shard, str(odd), 100)
    big = tmp_path / "big.bin"
    raw_uint16(str(big), [1, 5, 7, 100, 3])
    msg = error_of(open_shard, str(big), 100)
    assert "token id 100 at position 3" in msg and "vocab size 100" in msg
    short = tmp_path / "short.bin"
    write_shard(str(short), list(range(10)), 100)
    os.truncate(short, 16)
    assert "its sidecar says 10" in error_of(open_shard, str(short), 100)
    assert "not found" in error_of(open_shard, str(tmp_path / "missing.bin"), 100)
    wide = tmp_path / "wide.bin"
    write_shard(str(wide), [1, 2, 3], 32000)
    assert "32000-piece tokenizer" in error_of(open_shard, str(wide), 1024)


def test_too_few_tokens_for_a_window(tmp_path):
    write_shard(str(tmp_path / "t.bin"), list(range(8)), 100)
    msg = error_of(open_splits, str(tmp_path / "t.bin"), 100, 8, val_fraction=0.0)
    assert "seq_len+1 = 9" in msg
    assert open_splits(str(tmp_path / "t.bin"), 100, 7, val_fraction=0.0).train[0].tokens.size == 8


def test_split_tail_fraction_and_val_glob(tmp_path):
    write_shard(str(tmp_path / "train_0.bin"), np.arange(100), 1000)
    write_shard(str(tmp_path / "train_1.bin"), np.arange(200, 240), 1000)
    s = open_splits(str(tmp_path / "train_*.bin"), 1000, 4, val_fraction=0.1)
    assert [p.tokens.tolist() for p in s.train] == [list(range(90)), list(range(200, 236))]
    assert [p.tokens.tolist() for p in s.val] == [list(range(90, 100)), list(range(236, 240))]
    write_shard(str(tmp_path / "val.bin"), np.arange(500, 520), 1000)
    s = open_splits(str(tmp_path / "train_*.bin"), 1000, 4, val_data=str(tmp_path / "val.bin"))
    assert len(s.train[0].tokens) == 100 and s.val[0].tokens.tolist() == list(range(500, 520))


def two_shard_sampler(tmp_path, seq_len=8, seed=5):
    write_shard(str(tmp_path / "a.bin"), np.arange(0, 300), 60000)
    write_shard(str(tmp_path / "b.bin"), np.arange(10000, 10100), 60000)
    s = open_splits(str(tmp_path / "*.bin"), 60000, seq_len, val_fraction=0.0)
    return WindowSampler(s.train, seq_len, seed)


def test_windows_are_contiguous_slices_within_one_shard(tmp_path):
    smp = two_shard_sampler(tmp_path)
    seen_a = seen_b = 0
    starts = set()
    for _ in range(200):
        b = smp.batch(16)
        assert b.dtype == np.int32 and b.shape == (16, 9)
        assert (np.diff(b, axis=1) == 1).all()          # never crosses a shard boundary
        in_a = b[:, -1] < 300
        assert ((b[:, -1] >= 10000) | in_a).all() and (b[:, -1] < 10100).all()
        seen_a += in_a.sum()
        seen_b += (~in_a).sum()
        starts.update(b[:, 0].tolist())
    # 292 windows in a, 92 in b: draws follow the window counts; first and last windows occur
    assert abs(seen_a / (seen_a + seen_b) - 292 / 384) < 0.03
    assert {0, 291, 10000, 10091} <= starts and max(starts) == 10091


def test_sampler_state_restores_exactly(tmp_path):
    smp = two_shard_sampler(tmp_path, seed=11)
    for _ in range(3):
        smp.batch(4)
    saved = json.loads(json.dumps(smp.state()))      # as a checkpoint's JSON metadata holds it
    expected = [smp.batch(4) for _ in range(5)]
    other = two_shard_sampler(tmp_path, seed=999)
    other.set_state(saved)
    for want in expected:
        np.testing.assert_array_equal(other.batch(4), want)


def test_sampler_seed_decides_batches(tmp_path):
    a, b, c = (two_shard_sampler(tmp_path, seed=s) for s in (1, 1, 2))
    x = a.batch(8)
    np.testing.assert_array_equal(x, b.batch(8))
    assert not np.array_equal(x, c.batch(8))


def test_bad_sampler_state(tmp_path):
    smp = two_shard_sampler(tmp_path)
    assert "does not fit" in error_of(smp.set_state, {"bit_generator": "MT19937", "state": {}})


def test_eval_windows_fixed_and_spread(tmp_path):
    write_shard(str(tmp_path / "v.bin"), np.arange(1000), 2000)
    parts = open_splits(str(tmp_path / "v.bin"), 2000, 9, val_fraction=0.0).train
    w = eval_windows(parts, 9, 10)
    assert w.shape == (10, 10) and w[:, 0].tolist() == [i * 991 // 10 for i in range(10)]
    np.testing.assert_array_equal(w, eval_windows(parts, 9, 10))
    assert eval_windows([], 9, 10).shape == (0, 10)


# ---- prepare_data and the shipped corpus ----

def run(args, cwd=ROOT):
    r = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def test_shipped_data_is_valid_and_large_enough():
    m = config.model_preset("tiny")
    s = open_splits(os.path.join(ROOT, "data/train_*.bin"), m.vocab_size, m.seq_len,
                    val_data=os.path.join(ROOT, "data/val_*.bin"))
    n_train = sum(len(p.tokens) for p in s.train)
    n_val = sum(len(p.tokens) for p in s.val)
    assert n_train + n_val >= 1_000_000 and n_val >= 20 * (m.seq_len + 1)
    assert s.train[0].tokens[0] == 1                         # BOS starts the first story
    size = sum(os.path.getsize(os.path.join(ROOT, "data", f)) for f in os.listdir(os.path.join(ROOT, "data")))
    assert size < 8 * 2 ** 20


def test_shipped_stories_decode_as_text():
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "data/tokenizer.model"))
    toks = np.asarray(open_shard(os.path.join(ROOT, "data/val_000.bin"), 1024))
    bos = np.flatnonzero(toks == 1)
    story = sp.decode(toks[bos[0] + 1:bos[1]].tolist())
    assert story.count(".") >= 5 and "named" in story and "\n" in story


def test_make_corpus_is_deterministic(tmp_path):
    for name in ("a", "b"):
        run(["data/make_corpus.py", "--stories", "50", "--seed", "3", "--out", str(tmp_path / name)])
    a, b = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    assert a == b and len(a.splitlines()) == 50
    stories = [json.loads(x)["story"] for x in a.decode().splitlines()]
    assert len(set(stories)) == 50


def test_regenerate_reproduces_committed_files(tmp_path):
    """data/regenerate.sh's commands, run into a temp dir, give the committed bytes."""
    run(["data/make_corpus.py", "--stories", "8000", "--seed", "1", "--out", str(tmp_path / "s.jsonl")])
    run(["scripts/prepare_data.py", str(tmp_path / "s.jsonl"), "--vocab-size", "1024",
         "--val-fraction", "0.05", "--out", str(tmp_path / "d")])
    for f in ("tokenizer.model", "tokenizer.bin", "train_000.bin", "val_000.bin",
              "train_000.bin.json", "val_000.bin.json"):
        assert (tmp_path / "d" / f).read_bytes() == open(os.path.join(ROOT, "data", f), "rb").read(), f


def test_prepare_data_bos_per_document_and_inputs(tmp_path):
    import sentencepiece as spm
    docs = [f"Story number {i}. The cat sat on the mat and looked at the {i} birds." for i in range(40)]
    (tmp_path / "a.txt").write_text("\n<|endoftext|>\n".join(docs[:20]))
    (tmp_path / "b.json").write_text(json.dumps([{"story": d} for d in docs[20:]]))
    run(["scripts/prepare_data.py", str(tmp_path / "a.txt"), str(tmp_path / "b.json"),
         "--vocab-size", "300", "--val-fraction", "0.1", "--shard-tokens", "200",
         "--out", str(tmp_path / "o")])
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "o/tokenizer.model"))
    shards = data.find_shards(str(tmp_path / "o/train_*.bin"))
    assert len(shards) > 1 and all(len(open_shard(p, 300)) <= 200 for p in shards)
    train = np.concatenate([open_shard(p, 300) for p in shards]).tolist()
    val = np.concatenate([open_shard(p, 300) for p in data.find_shards(str(tmp_path / "o/val_*.bin"))]).tolist()
    expect = []
    for d in docs:
        expect += [1] + sp.encode(d)
    assert train + val == expect and train.count(1) == 36 and val.count(1) == 4
    # reuse the tokenizer: same ids
    run(["scripts/prepare_data.py", str(tmp_path / "a.txt"), str(tmp_path / "b.json"),
         "--tokenizer", str(tmp_path / "o/tokenizer.model"), "--val-fraction", "0.1",
         "--out", str(tmp_path / "p")])
    assert (tmp_path / "p/val_000.bin").read_bytes() == (tmp_path / "o/val_000.bin").read_bytes() + \
        (tmp_path / "o/val_001.bin").read_bytes()


def word_level_tokenizer(path, n_words, special="<|endoftext|>"):
    """A Hugging Face tokenizer.json of ``n_words`` whole words (w0, w1, ...) split on whitespace,
    with ``special`` as its last id, made with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(n_words)}
    vocab["[UNK]"] = n_words
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([special])
    tok.save(str(path))
    return tok


@pytest.mark.parametrize("n_words", [500, 70000])
def test_prepare_data_with_a_hugging_face_tokenizer_json(tmp_path, n_words):
    """--tokenizer tokenizer.json: ids as the tokenizers library encodes each document, its
    <|endoftext|> in front (no BOS named), uint32 shards once ids pass 65,535."""
    tok = word_level_tokenizer(tmp_path / "tokenizer.json", n_words)
    sep = tok.token_to_id("<|endoftext|>")
    rng = np.random.default_rng(5)
    docs = [" ".join(f"w{i}" for i in rng.integers(0, n_words, 30)) for _ in range(20)]
    (tmp_path / "docs.txt").write_text("\n<|endoftext|>\n".join(docs))
    run(["scripts/prepare_data.py", str(tmp_path / "docs.txt"), "--tokenizer", str(tmp_path / "tokenizer.json"),
         "--val-fraction", "0.1", "--out", str(tmp_path / "o")])
    vocab = n_words + 2
    meta = json.loads((tmp_path / "o/train_000.bin.json").read_text())
    assert meta["dtype"] == ("uint32" if vocab > 65535 else "uint16") and meta["vocab_size"] == vocab
    got = np.concatenate([open_shard(str(tmp_path / f"o/{s}_000.bin"), vocab) for s in ("train", "val")]).tolist()
    expect = []
    for d in docs:
        expect += [sep] + tok.encode(d, add_special_tokens=False).ids
    assert got == expect
    assert (max(got) > 65535) == (vocab > 65535)  # the large vocabulary's ids do need uint32
    assert sorted(os.listdir(tmp_path / "o")) == ["tokenizer.json", "train_000.bin", "train_000.bin.json",
                                                   "val_000.bin", "val_000.bin.json"]
    # a tokenizer_config.json beside it names the start token instead, and is copied along
    (tmp_path / "named").mkdir()
    word_level_tokenizer(tmp_path / "named" / "tokenizer.json", n_words)
    (tmp_path / "named" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w7"}))
    run(["scripts/prepare_data.py", str(tmp_path / "docs.txt"), "--tokenizer", str(tmp_path / "named/tokenizer.json"),
         "--val-fraction", "0", "--out", str(tmp_path / "p")])
    got = open_shard(str(tmp_path / "p/train_000.bin"), vocab).tolist()
    assert got[0] == 7 and got.count(7) >= 20 and (tmp_path / "p/tokenizer_config.json").exists()


def test_prepare_data_errors(tmp_path):
    r = subprocess.run([sys.executable, "scripts/prepare_data.py", str(tmp_path / "none*.txt"),
                        "--vocab-size", "300", "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: no input files match") and r.stderr.count("\n") == 1
