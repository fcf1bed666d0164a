"""llama2.c model .bin (export versions 0 and 1) and tokenizer.bin: byte layouts checked field by
field with struct against llama2.c's export.py order, round trips, bounds checks, and the exported
model's logits in our forward pass."""
import math
import os
import struct

import numpy as np
import pytest

from anetrain import llama2c
from anetrain.config import ModelConfig
from anetrain.errors import ModelFileError
from anetrain.model import Model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GQA on purpose: 2 query heads share 1 kv head; hd = 4
CFG = ModelConfig(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=10, seq_len=3)
UNTIED = ModelConfig(**{**CFG.to_dict(), "tie_embeddings": False})  # a classifier of its own


def cfg_of(unshared):
    return UNTIED if unshared else CFG


def make_arrays(cfg, unshared=False, seed=0):
    rng = np.random.default_rng(seed)
    shapes = llama2c.weight_shapes(cfg_of(unshared) if cfg is CFG else cfg)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def floats_at(raw, offset, n):
    return list(struct.unpack_from(f"<{n}f", raw, offset)), offset + 4 * n


def test_byte_layout_by_hand(tmp_path):
    a = make_arrays(CFG, unshared=True)
    p = tmp_path / "m.bin"
    llama2c.write_model(str(p), UNTIED, a)
    raw = p.read_bytes()
    assert struct.unpack_from("<7i", raw) == (8, 12, 2, 2, 1, -10, 3)   # negative vocab: unshared
    off = 28

    def expect(name_fmt, n_per):
        nonlocal off
        for i in range(2):
            got, off = floats_at(raw, off, n_per)
            assert got == a[name_fmt.format(i)].ravel().tolist(), name_fmt

    got, off = floats_at(raw, off, 80)
    assert got == a["tok_embeddings.weight"].ravel().tolist()
    expect("layers.{}.attention_norm.weight", 8)
    expect("layers.{}.attention.wq.weight", 64)      # [n_heads*hd=8, dim=8]
    expect("layers.{}.attention.wk.weight", 32)      # [n_kv_heads*hd=4, 8]
    expect("layers.{}.attention.wv.weight", 32)
    expect("layers.{}.attention.wo.weight", 64)
    expect("layers.{}.ffn_norm.weight", 8)
    expect("layers.{}.feed_forward.w1.weight", 96)   # [hidden=12, 8]
    expect("layers.{}.feed_forward.w2.weight", 96)   # [8, 12]
    expect("layers.{}.feed_forward.w3.weight", 96)
    got, off = floats_at(raw, off, 8)
    assert got == a["norm.weight"].tolist()
    # legacy RoPE tables, [seq=3, hd/2=2] each: cos then sin of pos * 10000^(-2i/4)
    cos, off = floats_at(raw, off, 6)
    sin, off = floats_at(raw, off, 6)
    angles = [pos * 10000.0 ** (-2 * i / 4) for pos in range(3) for i in range(2)]
    assert cos == pytest.approx([math.cos(t) for t in angles], abs=1e-6)
    assert sin == pytest.approx([math.sin(t) for t in angles], abs=1e-6)
    got, off = floats_at(raw, off, 80)
    assert got == a["output.weight"].ravel().tolist()
    assert off == len(raw)


V1_MAGIC = 0x616B3432  # "ak42"


def v1_tensors(a, layers=2):
    """The tensors of a version 1 file in export.py's version1_export order (not via llama2c.py)."""
    each = [[a[f"layers.{i}.{kind}.weight"] for i in range(layers)] for kind in (
        "attention_norm", "ffn_norm")]
    mats = [[a[f"layers.{i}.{kind}.weight"] for i in range(layers)] for kind in (
        "attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
        "feed_forward.w3")]
    out = each[0] + each[1] + [a["norm.weight"], a["tok_embeddings.weight"]] + [w for kind in mats for w in kind]
    return out + ([a["output.weight"]] if "output.weight" in a else [])


@pytest.mark.parametrize("unshared", [False, True])
def test_v1_byte_layout_by_hand(tmp_path, unshared):
    a = make_arrays(CFG, unshared=unshared, seed=1)
    p = tmp_path / "m.bin"
    llama2c.write_model(str(p), cfg_of(unshared), a, version=1)
    raw = p.read_bytes()
    assert struct.unpack_from("<I", raw, 0) == (V1_MAGIC,) and raw[:4] == b"24ka"
    assert struct.unpack_from("<i", raw, 4) == (1,)                       # version
    assert struct.unpack_from("<7i", raw, 8) == (8, 12, 2, 2, 1, 10, 3)   # vocab stays positive
    assert struct.unpack_from("<B", raw, 36) == (0 if unshared else 1,)   # shared_classifier
    assert raw[37:256] == bytes(219)                                      # zero padding to 256
    off = 256
    for w in v1_tensors(a):
        got, off = floats_at(raw, off, w.size)
        assert got == w.ravel().tolist()
    assert off == len(raw)  # no RoPE tables, nothing else


@pytest.mark.parametrize("unshared", [False, True])
def test_v1_file_made_from_the_spec_is_read(tmp_path, unshared):
    a = make_arrays(CFG, unshared=unshared, seed=2)
    header = struct.pack("<Ii7iB", V1_MAGIC, 1, 8, 12, 2, 2, 1, 10, 3, 0 if unshared else 1)
    body = b"".join(struct.pack(f"<{w.size}f", *w.ravel().tolist()) for w in v1_tensors(a))
    p = tmp_path / "m.bin"
    p.write_bytes(header + bytes(256 - len(header)) + body)
    cfg, b = llama2c.read_model(str(p))
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.seq_len) == \
        (8, 12, 2, 2, 1, 10, 3)
    assert set(b) == set(a) and cfg.tie_embeddings is not unshared
    for k in a:
        np.testing.assert_array_equal(b[k], a[k])


def test_v1_bad_headers(tmp_path):
    p = tmp_path / "m.bin"
    llama2c.write_model(str(p), CFG, make_arrays(CFG), version=1)
    raw = p.read_bytes()
    cases = [(raw[:-4], "needs exactly"), (raw[:100], "too short"),
             (raw[:4] + struct.pack("<i", 2) + raw[8:], "version 2"),
             (raw[:36] + b"\x07" + raw[37:], "shared_classifier 7"),
             (raw[:28] + struct.pack("<i", -10) + raw[32:], "vocab_size -10")]
    for bad, needle in cases:
        p.write_bytes(bad)
        with pytest.raises(ModelFileError, match=needle) as e:
            llama2c.read_model(str(p))
        assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_write_refuses_what_run_c_cannot_hold(tmp_path):
    a = make_arrays(CFG)
    for cfg in (ModelConfig(**{**CFG.to_dict(), "norm_eps": 1e-6}), ModelConfig(**{**CFG.to_dict(), "rope_theta": 5e5})):
        with pytest.raises(ModelFileError, match="run.c uses 1e-05 and 10000"):
            llama2c.write_model(str(tmp_path / "m.bin"), cfg, a)
    for qwen in (dict(head_dim=8), dict(qk_norm=True)):  # the Qwen3 family: q_dim 16 != dim 8, QK-norm
        cfg = ModelConfig(**{**CFG.to_dict(), **qwen})
        with pytest.raises(ModelFileError, match="which run.c does not compute; export to Hugging Face"):
            llama2c.write_model(str(tmp_path / "m.bin"), cfg, make_arrays(cfg))
    with pytest.raises(ModelFileError, match="version 2"):
        llama2c.write_model(str(tmp_path / "m.bin"), CFG, a, version=2)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("version", [0, 1])
def test_exported_model_has_the_same_logits(tmp_path, version):
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=48, seq_len=8)
    m = Model(cfg.native_kwargs(), backend="ref", precision="fp32", seed=5)
    tokens = np.random.default_rng(0).integers(0, 40, (2, 8))
    before = m.forward(tokens)
    p = str(tmp_path / "m.bin")
    llama2c.write_model(p, cfg, {f"{n}.weight": w for n, w in m.weights().items()}, version=version)
    cfg2, weights = llama2c.read_model(p)
    m2 = Model(cfg2.native_kwargs(), backend="ref", precision="fp32")
    for name, w in weights.items():
        m2.set(name, w)
    np.testing.assert_array_equal(m2.forward(tokens), before)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("unshared", [False, True])
def test_round_trip(tmp_path, unshared, version):
    a = make_arrays(CFG, unshared=unshared, seed=3)
    p = str(tmp_path / "m.bin")
    llama2c.write_model(p, cfg_of(unshared), a, version=version)
    cfg, b = llama2c.read_model(p)
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.seq_len) == \
        (8, 12, 2, 2, 1, 10, 3)
    assert set(b) == set(a) and ("output.weight" in b) == unshared
    for k in a:
        np.testing.assert_array_equal(b[k], a[k])


def test_equal_classifier_is_written_shared(tmp_path):
    a = make_arrays(CFG)
    a["output.weight"] = a["tok_embeddings.weight"].copy()
    p = tmp_path / "m.bin"
    llama2c.write_model(str(p), CFG, a)
    assert struct.unpack_from("<7i", p.read_bytes())[5] == 10
    assert "output.weight" not in llama2c.read_model(str(p))[1]


def test_size_must_match_header(tmp_path):
    p = tmp_path / "m.bin"
    llama2c.write_model(str(p), CFG, make_arrays(CFG))
    raw = p.read_bytes()
    for bad in (raw[:-4], raw + b"\0\0\0\0", raw[:20]):
        p.write_bytes(bad)
        with pytest.raises(ModelFileError) as e:
            llama2c.read_model(str(p))
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    # a header claiming a huge vocab must fail on size, not allocate or read past the end
    p.write_bytes(struct.pack("<7i", 8, 12, 2, 2, 1, 2_000_000_000, 3) + raw[28:])
    with pytest.raises(ModelFileError, match="needs exactly"):
        llama2c.read_model(str(p))
    p.write_bytes(struct.pack("<7i", 8, 12, 2, 0, 1, 10, 3) + raw[28:])
    with pytest.raises(ModelFileError, match="non-positive"):
        llama2c.read_model(str(p))


def test_write_checks_names_and_shapes(tmp_path):
    a = make_arrays(CFG)
    del a["layers.1.feed_forward.w2.weight"]
    with pytest.raises(ModelFileError, match="layers.1.feed_forward.w2.weight is missing"):
        llama2c.write_model(str(tmp_path / "m.bin"), CFG, a)
    a = make_arrays(CFG)
    a["layers.0.attention.wk.weight"] = np.zeros((8, 8), np.float32)
    with pytest.raises(ModelFileError, match=r"shape \(8, 8\), the config needs \(4, 8\)"):
        llama2c.write_model(str(tmp_path / "m.bin"), CFG, a)


def test_tokenizer_bin_layout():
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "data/tokenizer.model"))
    raw = open(os.path.join(ROOT, "data/tokenizer.bin"), "rb").read()
    (max_len,) = struct.unpack_from("<I", raw)
    off, pieces = 4, []
    while off < len(raw):
        score, n = struct.unpack_from("<fI", raw, off)
        pieces.append((raw[off + 8:off + 8 + n], score))
        off += 8 + n
    assert off == len(raw) and len(pieces) == sp.get_piece_size() == 1024
    assert max_len == max(len(b) for b, _ in pieces)
    assert pieces[1][0] == b"\n<s>\n" and pieces[2][0] == b"\n</s>\n" and pieces[0][0] == b"<unk>"
    for i in (3, 100, 500, 1023):
        assert pieces[i][0] == sp.id_to_piece(i).replace("\u2581", " ").encode()
        assert pieces[i][1] == pytest.approx(sp.get_score(i))
    assert (b" the", ) in [(b,) for b, _ in pieces]
    assert llama2c.read_tokenizer_bin(os.path.join(ROOT, "data/tokenizer.bin")) == (max_len, pieces)


def test_tokenizer_bin_truncated(tmp_path):
    raw = open(os.path.join(ROOT, "data/tokenizer.bin"), "rb").read()
    p = tmp_path / "t.bin"
    p.write_bytes(raw[:-3])
    with pytest.raises(ModelFileError):
        llama2c.read_tokenizer_bin(str(p))


def test_tokenizer_bin_encodes_and_decodes_as_sentencepiece():
    """llama2.c's merge-by-score encoding of the shipped tokenizer.bin gives the ids sentencepiece
    gives for the same BPE model, byte fallback included, and decoding gives its text. (Text with
    runs of spaces differs, as it does in llama2.c: sentencepiece collapses them first.)"""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "data/tokenizer.model"))
    tok = llama2c.Tokenizer.from_file(os.path.join(ROOT, "data/tokenizer.bin"))
    assert tok.get_piece_size() == sp.get_piece_size() and (tok.bos_id(), tok.eos_id()) == (sp.bos_id(), sp.eos_id())
    with open(os.path.join(ROOT, "data/train_000.bin"), "rb") as f:
        stories = sp.decode(np.frombuffer(f.read(40000), dtype="<u2").tolist()).split("\n")[:40]
    texts = stories + ["Once upon a time", "x", "Hello w\u00f6rld \u65e5\u672c \U0001f642!", "a\nb c", ""]
    for text in texts:
        ids = sp.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == sp.decode(ids), text
    assert tok.decode([1] + sp.encode("The end.") + [2]) == "The end."
