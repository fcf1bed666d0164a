"""Generation: the native KV-cache decoder against the trainer's forward pass (fp32), greedy
tokens against transformers' LlamaForCausalLM.generate on the exported model, seeded sampling,
the sampling rules against an independent NumPy computation and transformers' logits warpers,
every model source, and scripts/generate.py as a user runs it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import anetrain
from anetrain import _native, checkpoint, generation, hf, llama2c, modelfile
from anetrain.config import ModelConfig
from anetrain.errors import ModelFileError, UsageError
from anetrain.model import Model

from _optional_torch import torch, torch_ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATE = os.path.join(ROOT, "scripts", "generate.py")
TOKENIZER = generation.load_tokenizer(os.path.join(ROOT, "data", "tokenizer.model"))
CONFIGS = {  # gqa's whole-window prefill is long enough for the decoder to spread attention over threads
    "mha": dict(dim=64, n_layers=2, n_heads=4, vocab_size=97, seq_len=16),
    "gqa": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, seq_len=64),
    "mqa": dict(dim=48, n_layers=3, n_heads=6, n_kv_heads=1, vocab_size=50, seq_len=12, hidden_dim=40),
    # the Qwen3 family: q_dim 128 != dim, QK-norm before RoPE, rope_theta 1e6, tied and untied
    "qwen": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, qk_norm=True, rope_theta=1e6,
                 vocab_size=97, seq_len=16),
    "qwen_untied": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, qk_norm=True, rope_theta=1e6,
                        tie_embeddings=False, vocab_size=97, seq_len=16),
}


def fp32_model(cfg, seed=3):
    """A Model on the fp32 ref backend with random weights: norm gains away from 1, layers strong
    enough against the embedding that greedy decoding moves from token to token, and logits
    several units apart (so greedy choices are not near-ties)."""
    m = Model(cfg, backend="ref", precision="fp32", seed=seed)
    rng = np.random.default_rng(seed)
    for name in m.names():
        w = m.get(name)
        if name.endswith("norm"):
            m.set(name, 1 + 0.3 * rng.standard_normal(w.shape).astype(np.float32))
        elif name == "tok_embeddings":
            m.set(name, 0.2 * rng.standard_normal(w.shape).astype(np.float32))
        else:
            m.set(name, 2 * w)
    return m


def assert_logits_close(got, ref, rel=1e-5):
    """Each position's logits within rel of that position's largest logit."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    worst = (np.abs(got - ref) / scale).max()
    assert worst <= rel, f"largest difference {worst:.3g} of a position's largest logit"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decoder_logits_equal_model_forward_at_every_position(name):
    m = fp32_model(CONFIGS[name])
    seq, vocab = m.config.seq_len, m.config.vocab_size
    tokens = np.random.default_rng(1).integers(0, vocab, (1, seq)).astype(np.int32)
    ref = m.forward(tokens)[0]
    # from arrays (what a path gives), prompt of 5 in one batch, then one position per token
    dec = _native.Decoder(m.config, {n: m.get(n) for n in m.names()})
    got = [dec.forward(tokens[0, :5], all_positions=True)]
    got += [dec.forward(tokens[0, i:i + 1])[None] for i in range(5, seq)]
    assert dec.position == seq
    assert_logits_close(np.concatenate(got), ref)
    # from the live model, the whole window as one batch, then again after reset
    live = m.decoder()
    assert_logits_close(live.forward(tokens[0], all_positions=True), ref)
    live.reset()
    assert_logits_close(live.forward(tokens[0, :1])[None], ref[:1])


@pytest.mark.torch
def test_decoder_with_its_own_classifier_matches_pytorch():
    m = fp32_model(CONFIGS["gqa"])
    weights = {n: m.get(n) for n in m.names()}
    out = np.random.default_rng(5).standard_normal(weights["tok_embeddings"].shape).astype(np.float32)
    tokens = np.random.default_rng(2).integers(0, m.config.vocab_size, m.config.seq_len + 1)
    ref_model = torch_ref.build(m.config, weights)
    ref_model.output.weight = torch.nn.Parameter(torch.from_numpy(out))  # untied
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(tokens[None]).long())[0][0].numpy()
    dec = _native.Decoder(m.config, {**weights, "output": out})
    assert dec.weight_bytes == 4 * (m.config.vocab_size * m.config.dim + sum(w.size for w in weights.values()))
    assert_logits_close(dec.forward(tokens[:-1], all_positions=True), ref, rel=1e-4)


def test_decoder_refuses_bad_input_and_stays_usable():
    m = fp32_model(CONFIGS["mha"])
    weights = {n: m.get(n) for n in m.names()}
    with pytest.raises(ValueError, match="unexpected weight 'layers.0.attention.wq.weight'"):
        _native.Decoder(m.config, {**weights, "layers.0.attention.wq.weight": weights["layers.0.attention.wq"]})
    with pytest.raises(ValueError, match="missing"):
        _native.Decoder(m.config, {k: v for k, v in weights.items() if k != "norm"})
    with pytest.raises(ValueError, match="float32"):
        _native.Decoder(m.config, {**weights, "norm": weights["norm"].astype(np.float64)})
    dec = _native.Decoder(m.config, weights, context=8)
    assert dec.context == 8 and dec.cache_bytes >= 2 * 4 * 2 * 8 * 64
    tokens = np.arange(10, 18)
    first = dec.forward(tokens[:6], all_positions=True)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        dec.forward(np.array([5, 97]))
    with pytest.raises(ValueError, match="do not fit the context"):
        dec.forward(tokens[:3])
    assert dec.position == 6
    last = dec.forward(tokens[6:], all_positions=True)
    ref = m.forward(np.concatenate([tokens, np.zeros(8, np.int64)])[None])[0, :8]
    assert_logits_close(np.concatenate([first, last]), ref)


def greedy_by_forward(m, prompt, n):
    """Greedy continuation from Model.forward over the whole window for every token."""
    ids = list(prompt)
    for _ in range(n):
        window = np.zeros((1, m.config.seq_len), np.int32)
        window[0, :len(ids)] = ids
        ids.append(int(np.argmax(m.forward(window)[0, len(ids) - 1])))
    return ids[len(prompt):]


def test_greedy_is_deterministic_and_follows_the_forward_pass():
    m = fp32_model(CONFIGS["gqa"])
    prompt = [1, 40, 7]
    a = list(anetrain.generate(m, prompt, max_tokens=10, temperature=0, stop_at_eos=False))
    b = list(anetrain.generate(m.decoder(), prompt, max_tokens=10, temperature=0, stop_at_eos=False))
    assert len(set(a)) >= 4, a
    assert a == b == greedy_by_forward(m, prompt, 10)


def test_generation_stops_at_eos_and_at_a_full_context():
    m = fp32_model(CONFIGS["mha"])
    ids = list(anetrain.generate(m, [1], max_tokens=100, temperature=0, stop_at_eos=False))
    assert len(ids) == m.config.seq_len  # the last one is predicted from the last position
    eos = ids[4]
    assert list(anetrain.generate(m, [1], max_tokens=100, temperature=0, eos_id=eos)) == ids[:ids.index(eos)]
    with pytest.raises(UsageError, match="no room"):
        anetrain.generate(m, list(range(16)), temperature=0)
    with pytest.raises(UsageError, match="temperature"):
        anetrain.generate(m, [1], temperature=-1)


def test_seeded_sampling_is_reproducible():
    m = Model(CONFIGS["mha"], backend="ref", precision="fp32", seed=3)  # the small init: flat distributions
    run = lambda seed: list(anetrain.generate(m, [1, 3], max_tokens=12, temperature=1.0, top_p=0.95, seed=seed,
                                              stop_at_eos=False))
    assert run(7) == run(7)
    assert run(7) != run(8)


def independent_support(logits, temperature, top_k, top_p):
    """The tokens sampling may pick and their probabilities, by sorting (no shared code)."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    order = sorted(range(len(p)), key=lambda i: -logits[i])
    if top_k:
        order = order[:top_k]
    q = p[order] / p[order].sum()
    kept, mass = [], 0.0
    for i, pi in zip(order, q):
        kept.append(i)
        mass += pi
        if mass >= top_p:
            break
    out = np.zeros_like(p)
    out[kept] = p[kept] / p[kept].sum()
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6),
                                                     (0.9, 20, 0.8), (1.0, 1, 0.5)])
def test_sampling_support_and_probabilities(temperature, top_k, top_p):
    logits = np.random.default_rng(0).standard_normal(40).astype(np.float32) * 3
    want = independent_support(logits.astype(np.float64), temperature, top_k, top_p)
    got = generation.token_probs(logits, temperature, top_k, top_p)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    rng = np.random.default_rng(1)
    draws = np.array([generation.sample_token(logits, temperature, top_k, top_p, rng) for _ in range(4000)])
    assert set(draws) <= set(np.flatnonzero(want))
    freq = np.bincount(draws, minlength=40) / len(draws)
    assert np.abs(freq - want).max() < 0.04


@pytest.mark.torch
@pytest.mark.transformers
def test_sampling_matches_transformers_logits_warpers():
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    for seed in range(5):
        logits = np.random.default_rng(seed).standard_normal(100).astype(np.float32) * 2
        for temperature, top_k, top_p in [(0.8, 10, 0.9), (1.2, 0, 0.7), (1.0, 30, 1.0)]:
            z = torch.from_numpy(logits)[None].double()
            z = TemperatureLogitsWarper(temperature)(None, z)
            if top_k:
                z = TopKLogitsWarper(top_k)(None, z)
            if top_p < 1:
                z = TopPLogitsWarper(top_p)(None, z)
            want = torch.softmax(z, -1)[0].numpy()
            np.testing.assert_allclose(generation.token_probs(logits, temperature, top_k, top_p), want, atol=1e-12)


def test_text_stream_gives_the_decoded_text_piece_by_piece():
    tok = llama2c.Tokenizer.from_file(os.path.join(ROOT, "data", "tokenizer.bin"))
    text = "Lily saw a bird. \"Hi!\" she said, and smiled 🙂 über."
    ids = tok.encode(text)
    assert any(i in tok.byte_pieces for i in ids)  # the emoji and ü come as byte pieces
    stream = generation.TextStream(tok)
    parts = [stream.push(i) for i in ids]
    assert "".join(parts) + stream.flush() == text
    assert all("\ufffd" not in p for p in parts)


def write_run(run_dir, cfg, weights, step=3, tokenizer=os.path.join(ROOT, "data", "tokenizer.model")):
    """A run directory as the trainer leaves it (a checkpoint with weights and AdamW moments)."""
    arrays = {f"weight:{n}": w for n, w in weights.items()}
    arrays.update({f"m:{n}": np.zeros_like(w) for n, w in weights.items()})
    meta = {"config": cfg.to_dict(), "train": {"tokenizer": tokenizer}, "step": step}
    checkpoint.save(checkpoint.step_path(str(run_dir), step), arrays, meta)


def small_vocab_model():
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1024, seq_len=24)
    return cfg, fp32_model(cfg.native_kwargs())


def test_every_model_source_gives_the_same_tokens(tmp_path):
    cfg, m = small_vocab_model()
    weights = {n: m.get(n) for n in m.names()}
    named = {f"{n}.weight": w for n, w in weights.items()}
    write_run(tmp_path / "run", cfg, weights)
    llama2c.write_model(str(tmp_path / "v0.bin"), cfg, named)
    llama2c.write_model(str(tmp_path / "v1.bin"), cfg, named, version=1)
    hf.write_hf(str(tmp_path / "hf"), cfg, named)
    run = lambda src: list(anetrain.generate(src, [1, 5], max_tokens=8, temperature=0.9, seed=4,
                                             stop_at_eos=False))
    want = run(m)
    sources = ["run", checkpoint.step_path(str(tmp_path / "run"), 3), "v0.bin", "v1.bin", "hf"]
    for src in sources:
        assert run(str(tmp_path / src)) == want, src
    _, read, info = modelfile.read(str(tmp_path / "run"))
    assert set(read) == set(named)  # the AdamW moments were left out
    assert generation.tokenizer_for(info).endswith("tokenizer.model")
    with pytest.raises(ModelFileError, match="neither config.json"):
        generation.decoder(tmp_path)


@pytest.mark.torch
@pytest.mark.transformers
@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_greedy_tokens_equal_transformers_generate(tmp_path, name):
    """The exported model (hf.write_hf) in transformers' LlamaForCausalLM.generate, greedy with its
    KV cache, picks the tokens our decoder picks from the same directory."""
    from transformers import LlamaForCausalLM

    m = fp32_model(CONFIGS[name])
    cfg = ModelConfig(**{k: getattr(m.config, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads",
                                                             "vocab_size", "hidden_dim", "seq_len")})
    hf.write_hf(str(tmp_path), cfg, {f"{n}.weight": m.get(n) for n in m.names()})
    prompt, n = [1, 40, 7], cfg.seq_len - 3
    theirs = LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              use_cache=True, pad_token_id=0)
    ours = list(anetrain.generate(str(tmp_path), prompt, max_tokens=n, temperature=0, stop_at_eos=False))
    assert len(set(ours)) >= 4, ours  # a sequence that moves, not one token repeated
    assert ours == out[0, len(prompt):].tolist()


def cli(*args):
    return subprocess.run([sys.executable, GENERATE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_cli_streams_text_and_reports_speed(tmp_path):
    cfg, m = small_vocab_model()
    write_run(tmp_path, cfg, {n: m.get(n) for n in m.names()})
    p = cli(tmp_path, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0")
    assert p.returncode == 0, p.stderr
    prompt = TOKENIZER.encode("Once upon a time")
    ids = list(anetrain.generate(m, [1] + prompt, max_tokens=12, temperature=0))
    assert p.stdout == TOKENIZER.decode(prompt + ids) + "\n"
    assert "tok/s" in p.stderr.splitlines()[-1]


def test_cli_with_a_llama2c_model_and_tokenizer_bin(tmp_path):
    cfg, m = small_vocab_model()
    llama2c.write_model(str(tmp_path / "model.bin"), cfg, {f"{n}.weight": m.get(n) for n in m.names()})
    p = cli(tmp_path / "model.bin", "--tokenizer", os.path.join(ROOT, "data", "tokenizer.bin"), "--seed", "1",
            "--max-tokens", "5", "--prompt", "Tom")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Tom")


def test_cli_with_an_exported_hf_directory_and_its_tokenizer(tmp_path):
    cfg, m = small_vocab_model()
    hf.write_hf(str(tmp_path), cfg, {f"{n}.weight": m.get(n) for n in m.names()})
    hf.write_tokenizer(str(tmp_path), os.path.join(ROOT, "data", "tokenizer.model"), cfg.seq_len)
    p = cli(tmp_path, "--temperature", "0", "--max-tokens", "6", "--prompt", "Lily")
    assert p.returncode == 0, p.stderr
    ids = list(anetrain.generate(m, [1] + TOKENIZER.encode("Lily"), max_tokens=6, temperature=0))
    assert p.stdout == TOKENIZER.decode(TOKENIZER.encode("Lily") + ids) + "\n"


@pytest.mark.parametrize("args,message", [
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}"], "neither config.json"),
    (["{run}", "--top-p", "1.5"], "top_p"),
    (["{run}", "--tokenizer", "{tmp}/nope.model"], "does not exist"),
    (["{bin}"], "names no tokenizer"),
    (["{small}", "--tokenizer", os.path.join(ROOT, "data", "tokenizer.model")], "the model's vocabulary has 97"),
])
def test_cli_bad_input_is_one_error_line(sources, args, message):
    p = cli(*[a.format(**sources) for a in args])
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and message in p.stderr and len(p.stderr.splitlines()) == 1


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Model paths for the command-line error cases: a run, a .bin without a tokenizer beside it,
    a .bin whose vocabulary is not the shipped tokenizer's, and an empty directory."""
    tmp = tmp_path_factory.mktemp("sources")
    cfg, m = small_vocab_model()
    weights = {n: m.get(n) for n in m.names()}
    write_run(tmp / "run", cfg, weights)
    os.makedirs(tmp / "lonely")
    llama2c.write_model(str(tmp / "lonely" / "m.bin"), cfg, {f"{n}.weight": w for n, w in weights.items()})
    small = fp32_model(CONFIGS["mha"])
    llama2c.write_model(str(tmp / "small.bin"), ModelConfig(**CONFIGS["mha"]),
                        {f"{n}.weight": small.get(n) for n in small.names()})
    os.makedirs(tmp / "empty")
    return dict(tmp=tmp / "empty", run=tmp / "run", bin=tmp / "lonely" / "m.bin", small=tmp / "small.bin")


def test_training_samples_come_from_the_decoder(tmp_path):
    """The sample a run logs at its last step is what generate() gives from its final checkpoint."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--steps", "2", "--out", str(out),
                        "--dim", "32", "--n-layers", "1", "--n-heads", "2", "--seq-len", "32", "--batch-size", "1",
                        "--eval-interval", "0", "--sample-interval", "2", "--sample-tokens", "20", "--backend", "ref"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(out / "metrics.jsonl") as f:
        samples = [r for r in map(json.loads, f) if r.get("type") == "sample"]
    assert [s["step"] for s in samples] == [2]
    ids = list(anetrain.generate(str(out), [1], max_tokens=20, temperature=0.8, top_k=50, top_p=1.0, seed=2))
    assert samples[0]["text"] == TOKENIZER.decode(ids)
