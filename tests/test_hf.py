"""Hugging Face interop (anetrain/hf.py, scripts/export_hf.py, train.py --init-from HF_DIR), checked
against transformers' own LlamaForCausalLM: what we write it loads with our logits, what it writes
we read with its logits, and round trips keep every tensor bit for bit."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from anetrain import checkpoint, hf, modelfile
from anetrain.config import ModelConfig
from anetrain.errors import ModelFileError
from anetrain.llama2c import weight_shapes
from anetrain.model import Model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
MHA = ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, hidden_dim=48, seq_len=12)
GQA = ModelConfig(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=80, hidden_dim=64, seq_len=12,
                  norm_eps=1e-6, rope_theta=500000.0)
# a small model on the shipped corpus (vocab 1024) for the command-line tests
RUN_FLAGS = ["--seq-len", "32", "--batch-size", "4", "--eval-interval", "0", "--sample-interval", "0",
             "--backend", "ref"]


def random_weights(cfg, seed=0):
    """Weights on the scale of a trained model's (norm gains near 1), so logits spread over units."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in weight_shapes(cfg).items():
        if len(shape) == 1:
            out[name] = (1 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(shape[1]) * 1.5).astype(np.float32)
    return out


def our_logits(cfg, weights, tokens):
    m = Model(cfg.native_kwargs(), backend="ref", precision="fp32")
    for name, w in weights.items():
        m.set(name, w)
    return m.forward(tokens)


def tokens_for(cfg, batch=2, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, cfg.seq_len)).astype(np.int32)


def hf_logits(model_dir, tokens):
    import torch
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def transformers_model(cfg, tie=True, seed=0, **extra):
    """A LlamaForCausalLM of ``cfg``'s shape made by transformers itself, weights random (and norm
    gains away from 1, so a misplaced norm would show)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hc = LlamaConfig(hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                     vocab_size=cfg.vocab_size, max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps,
                     rope_theta=cfg.rope_theta, tie_word_embeddings=tie, initializer_range=0.2, **extra)
    m = LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return m


# ---------------------------------------------------------------- ours -> transformers
@pytest.mark.transformers
@pytest.mark.parametrize("cfg", [MHA, GQA], ids=["mha", "gqa"])
def test_export_loads_in_transformers_with_our_logits(tmp_path, cfg, monkeypatch):
    w = random_weights(cfg)
    tokens = tokens_for(cfg)
    ours = our_logits(cfg, w, tokens)
    hf.write_hf(str(tmp_path / "m"), cfg, w)
    theirs = hf_logits(str(tmp_path / "m"), tokens)
    assert np.abs(ours).max() > 1  # logits spread enough for 1e-4 to mean something
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    # the rotary permutation is what makes them agree: without it they do not
    monkeypatch.setattr(hf, "to_hf_rows", lambda a, head_dim: a)
    hf.write_hf(str(tmp_path / "unpermuted"), cfg, w)
    assert np.abs(hf_logits(str(tmp_path / "unpermuted"), tokens) - ours).max() > 1e-2


def test_rotary_rows_by_hand():
    # head_dim 4, two heads: HF's row i of a head is our row 2i, its row i + 2 our row 2i + 1
    w = np.arange(8)
    np.testing.assert_array_equal(hf.to_hf_rows(w, 4), [0, 2, 1, 3, 4, 6, 5, 7])
    m = np.arange(24).reshape(12, 2)  # head_dim 6, two heads, rows of 2
    np.testing.assert_array_equal(hf.to_hf_rows(m, 6)[:, 0] // 2, [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11])
    np.testing.assert_array_equal(hf.from_hf_rows(hf.to_hf_rows(m, 6), 6), m)


def test_written_files_by_the_format(tmp_path):
    w = random_weights(GQA)
    hf.write_hf(str(tmp_path), GQA, w, extra_config={"bos_token_id": 1})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"],
            config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"],
            config["max_position_embeddings"]) == (48, 64, 2, 6, 2, 80, 12)
    assert config["rms_norm_eps"] == 1e-6 and config["rope_parameters"]["rope_theta"] == 500000.0
    assert config["tie_word_embeddings"] is True and config["bos_token_id"] == 1
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in tensors and len(tensors) == 2 + 9 * 2
    np.testing.assert_array_equal(tensors["model.layers.1.mlp.gate_proj.weight"], w["layers.1.feed_forward.w1.weight"])
    np.testing.assert_array_equal(tensors["model.layers.0.self_attn.v_proj.weight"],
                                  w["layers.0.attention.wv.weight"])
    # k_proj: 2 kv heads of head_dim 8, each head's rows 0,2,4,6 then 1,3,5,7
    k = w["layers.0.attention.wk.weight"]
    order = [h * 8 + r for h in range(2) for r in (0, 2, 4, 6, 1, 3, 5, 7)]
    np.testing.assert_array_equal(tensors["model.layers.0.self_attn.k_proj.weight"], k[order])


# ---------------------------------------------------------------- transformers -> ours
@pytest.mark.transformers
@pytest.mark.parametrize("case", ["mha", "gqa_sharded", "gqa_bf16"])
def test_transformers_model_read_gives_its_logits(tmp_path, case):
    import torch

    cfg = MHA if case == "mha" else GQA
    m = transformers_model(cfg)
    if case == "gqa_sharded":
        m.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    elif case == "gqa_bf16":
        m.to(torch.bfloat16).save_pretrained(tmp_path)
    else:
        m.save_pretrained(tmp_path)
    got_cfg, weights, extras = hf.read_hf(str(tmp_path))
    assert extras["architecture"] == "LlamaForCausalLM" and "output.weight" not in weights
    for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "seq_len", "norm_eps",
              "rope_theta"):
        assert getattr(got_cfg, f) == pytest.approx(getattr(cfg, f)), f
    tokens = tokens_for(cfg)
    if case == "gqa_bf16":  # the reference: the very bf16 values, loaded by transformers in fp32
        theirs = hf_logits(str(tmp_path), tokens)
    else:
        with torch.no_grad():
            theirs = m(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(our_logits(got_cfg, weights, tokens), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.transformers
def test_round_trips_keep_every_tensor(tmp_path):
    from safetensors.numpy import load_file

    transformers_model(GQA).save_pretrained(tmp_path / "theirs")
    cfg, weights, _ = hf.read_hf(str(tmp_path / "theirs"))
    hf.write_hf(str(tmp_path / "again"), cfg, weights)
    before = load_file(str(tmp_path / "theirs" / "model.safetensors"))
    after = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert set(after) == set(before)
    for name in before:
        assert before[name].tobytes() == after[name].tobytes(), name
    # and ours -> HF -> ours
    w = random_weights(MHA)
    hf.write_hf(str(tmp_path / "ours"), MHA, w)
    cfg2, back, _ = hf.read_hf(str(tmp_path / "ours"))
    assert cfg2.to_dict() == {**MHA.to_dict(), "name": "ours"} and set(back) == set(w)
    for name in w:
        assert back[name].tobytes() == w[name].tobytes(), name


@pytest.mark.transformers
def test_classifier_tied_untied_and_equal(tmp_path):
    import torch

    untied = transformers_model(MHA, tie=False)
    untied.save_pretrained(tmp_path / "untied")
    _, weights, _ = hf.read_hf(str(tmp_path / "untied"))
    np.testing.assert_array_equal(weights["output.weight"], untied.lm_head.weight.detach().numpy())
    with pytest.raises(ModelFileError, match="has its own classifier"):
        modelfile.read(str(tmp_path / "untied"))
    # written back untied, it stays untied
    cfg, weights, _ = modelfile.read(str(tmp_path / "untied"), allow_untied=True)
    hf.write_hf(str(tmp_path / "again"), cfg, weights)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["tie_word_embeddings"] is False
    tokens = tokens_for(MHA)
    with torch.no_grad():
        theirs = untied(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(hf_logits(str(tmp_path / "again"), tokens), theirs, rtol=1e-5, atol=1e-5)
    # an untied lm_head equal to the embedding is the tied model
    with torch.no_grad():
        untied.lm_head.weight.copy_(untied.model.embed_tokens.weight)
    untied.save_pretrained(tmp_path / "equal")
    _, weights, _ = modelfile.read(str(tmp_path / "equal"))
    assert "output.weight" not in weights


# ---------------------------------------------------------------- what is refused
def _edit_config(d, **changes):
    p = os.path.join(d, "config.json")
    config = json.load(open(p))
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    json.dump(config, open(p, "w"))


@pytest.mark.parametrize("case,needle", [
    ("no_config", "neither config.json"),
    ("architecture", "architecture 'GPT2LMHeadModel' is not supported; anetrain reads LlamaForCausalLM"),
    ("rope_scaling", "RoPE scaling 'llama3' is not supported"),
    ("activation", "hidden_act is 'gelu'"),
    ("head_dim", "head_dim 16 is not hidden_size / num_attention_heads"),
    ("no_weights", "no model.safetensors or model.safetensors.index.json"),
    ("missing_tensor", "weight model.layers.1.mlp.up_proj.weight is missing"),
    ("wrong_shape", "model.norm.weight has shape (40,), config.json needs (32,)"),
    ("unknown_tensor", "tensors model.extra.weight are not part of LlamaForCausalLM"),
    ("truncated", "does not fit the file"),
    ("bad_size", "describes a model anetrain cannot build"),
    ("huge_layer_count", "says 2000000000 layers but the weights hold only 20 tensors"),
])
def test_bad_directories_are_one_clear_error(tmp_path, case, needle):
    from safetensors.numpy import load_file, save_file

    d = str(tmp_path / "m")
    hf.write_hf(d, MHA, random_weights(MHA))
    weights_file = os.path.join(d, "model.safetensors")
    if case == "no_config":
        os.unlink(os.path.join(d, "config.json"))
    elif case == "architecture":
        _edit_config(d, architectures=["GPT2LMHeadModel"])
    elif case == "rope_scaling":
        _edit_config(d, rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4})
    elif case == "activation":
        _edit_config(d, hidden_act="gelu")
    elif case == "head_dim":
        _edit_config(d, head_dim=16)
    elif case == "no_weights":
        os.unlink(weights_file)
    elif case == "bad_size":
        _edit_config(d, num_attention_heads=5)
    elif case == "huge_layer_count":
        _edit_config(d, num_hidden_layers=2_000_000_000)
    elif case == "truncated":
        raw = open(weights_file, "rb").read()
        open(weights_file, "wb").write(raw[:-100])
    else:
        t = load_file(weights_file)
        if case == "missing_tensor":
            del t["model.layers.1.mlp.up_proj.weight"]
        elif case == "wrong_shape":
            t["model.norm.weight"] = np.ones(40, np.float32)
        else:
            t["model.extra.weight"] = np.ones(3, np.float32)
        save_file(t, weights_file)
    with pytest.raises(ModelFileError) as e:
        modelfile.read(d)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- the command lines
def cli(script, *args, check=True):
    p = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *map(str, args)], capture_output=True,
                       text=True, timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def one_error(p, needle):
    lines = p.stderr.strip().splitlines()
    return p.returncode == 2 and needle in lines[-1] and lines[-1].startswith("error:") and "Traceback" not in p.stderr


@pytest.mark.transformers
def test_train_starts_from_a_transformers_model(tmp_path):
    src = tmp_path / "hf"
    # the shape comes from config.json: no shape flags below
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1024, hidden_dim=96, seq_len=64,
                      norm_eps=1e-6, rope_theta=20000.0)
    transformers_model(cfg).save_pretrained(src, max_shard_size="100KB")
    _, weights, _ = hf.read_hf(str(src))
    out = tmp_path / "run"
    p = cli("train.py", *RUN_FLAGS, "--steps", "1", "--lr", "1e-30", "--warmup-steps", "0", "--out", out,
            "--init-from", src)
    assert "initialised from" in p.stderr
    arrays, meta = checkpoint.load(checkpoint.latest(str(out)))
    assert {k: meta["config"][k] for k in ("dim", "n_kv_heads", "hidden_dim", "seq_len", "norm_eps", "rope_theta")} \
        == dict(dim=64, n_kv_heads=2, hidden_dim=96, seq_len=32, norm_eps=pytest.approx(1e-6), rope_theta=20000.0)
    for name, w in weights.items():  # a vanishing lr keeps the weights
        np.testing.assert_allclose(arrays["weight:" + name[:-len(".weight")]], w, rtol=0, atol=1e-6, err_msg=name)
    p = cli("train.py", *RUN_FLAGS, "--dim", "96", "--out", tmp_path / "run2", "--init-from", src, check=False)
    assert one_error(p, "holds another model (dim 64 vs 96 requested)"), p.stderr
    _edit_config(str(src), architectures=["MistralForCausalLM"])
    p = cli("train.py", *RUN_FLAGS, "--out", tmp_path / "run3", "--init-from", src, check=False)
    assert one_error(p, "'MistralForCausalLM' is not supported"), p.stderr
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


@pytest.mark.transformers
def test_export_hf_of_a_trained_run(tmp_path):
    out = tmp_path / "run"
    cli("train.py", *RUN_FLAGS, "--dim", "64", "--n-layers", "2", "--n-heads", "4", "--n-kv-heads", "2",
        "--steps", "2", "--out", out)
    arrays, _ = checkpoint.load(checkpoint.latest(str(out)))
    cfg, before, _ = modelfile.read(str(out))
    dest = tmp_path / "hf"
    p = cli("export_hf.py", out, dest)
    assert ", tokenizer " in p.stdout and (dest / "tokenizer.model").exists()
    tokens = tokens_for(cfg)
    ours = our_logits(cfg, before, tokens)
    np.testing.assert_allclose(hf_logits(str(dest), tokens), ours, rtol=1e-4, atol=1e-4)
    # back in our forward pass, the exported model is the model before export
    cfg2, after, _ = modelfile.read(str(dest))
    np.testing.assert_array_equal(our_logits(cfg2, after, tokens), ours)
    # the run's tokenizer, as transformers loads it, splits text as sentencepiece does
    pytest.importorskip("google.protobuf", reason="transformers converts a tokenizer.model with protobuf")
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "data", "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(dest))
    text = "Once upon a time, there was a little girl named Lily. She liked to play outside."
    assert tok(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)
    config = json.loads((dest / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    # bad targets: one line each
    (tmp_path / "file").write_text("x")
    assert one_error(cli("export_hf.py", out, tmp_path / "file", check=False), "is a file")
    assert one_error(cli("export_hf.py", tmp_path / "nothing", dest, check=False), "does not exist")
