"""Layer 4: the native training step against PyTorch autograd (tests/torch_ref.py).

The trainer runs every layer through the generated MIL kernels on the ref backend. In fp32
precision the programs carry fp32 tensors and nothing is rounded, so loss and gradients must
match the float64 PyTorch reference tightly; in fp16 precision (what the ANE computes) they
must match within fp16 accuracy.
"""
import numpy as np
import pytest

from anetrain import _native

torch = pytest.importorskip("torch", reason="PyTorch is the reference model (pip install torch)")
import torch_ref  # noqa: E402

CONFIGS = {
    "mha": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=67, hidden_dim=64, seq_len=16),
    "gqa": dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=53, hidden_dim=0, seq_len=12),
}


def make_trainer(name, pipeline, precision, seed=3, budget=-1):
    cfg = _native.ModelConfig(**CONFIGS[name])
    backend = _native.make_ref_backend(compile_budget=budget, fp16_rounding=precision == "fp16")
    t = _native.Trainer(cfg, backend, pipeline=pipeline, precision=precision)
    t.state.init_random(seed)
    return t, cfg


def reference(cfg, state):
    return torch_ref.build(cfg, {n: state.get(n) for n in state.names()}, dtype=torch.float64)


def tokens_for(cfg, batch, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len + 1)).astype(np.int32)


def mean_grads(t):
    scale = 1.0 / (t.loss_scale * t.pending_sequences)
    return {n: t.state.get(n, "grad") * scale for n in t.state.names()}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
@pytest.mark.parametrize("batch", [1, 2])
def test_fp32_loss_and_gradients_match_autograd(name, pipeline, batch):
    t, cfg = make_trainer(name, pipeline, "fp32")
    model = reference(cfg, t.state)
    tokens = tokens_for(cfg, batch, seed=batch)
    loss = t.accumulate(tokens)
    _, ref = model(torch.tensor(tokens.astype(np.int64)))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * abs(ref.item())
    grads = mean_grads(t)
    for n, p in model.weights().items():
        g = p.grad.numpy()
        err = np.linalg.norm(grads[n] - g) / np.linalg.norm(g)
        assert err <= 1e-4, f"{n}: relative error {err:.2e}"


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_fp16_loss_and_gradients_within_half_precision(name, pipeline):
    t, cfg = make_trainer(name, pipeline, "fp16")
    model = reference(cfg, t.state)
    tokens = tokens_for(cfg, 2, seed=9)
    loss = t.accumulate(tokens)
    _, ref = model(torch.tensor(tokens.astype(np.int64)))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-2 * abs(ref.item())
    grads = mean_grads(t)
    for n, p in model.weights().items():
        g = p.grad.numpy().ravel()
        ours = grads[n].ravel()
        cos = float(ours @ g / (np.linalg.norm(ours) * np.linalg.norm(g)))
        assert cos >= 0.99, f"{n}: cosine similarity {cos:.4f}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pipelines_agree(name):
    tokens = tokens_for(_native.ModelConfig(**CONFIGS[name]), 2, seed=4)
    results = []
    for pipeline in ("static", "dynamic"):
        t, _ = make_trainer(name, pipeline, "fp32")
        loss = t.accumulate(tokens)
        results.append((loss, mean_grads(t)))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) <= 1e-6 * abs(l1)
    for n in g1:
        np.testing.assert_allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6 * np.abs(g1[n]).max(), err_msg=n)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_fifty_adamw_steps_track_pytorch(precision, pipeline):
    t, cfg = make_trainer("gqa", pipeline, precision, seed=5)
    model = reference(cfg, t.state)
    opt = torch_ref.adamw(model, lr=3e-3)
    params = list(model.weights().values())
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, cfg.vocab_size // 4, 400).astype(np.int32)  # a learnable distribution
    ours, ref = [], []
    for step in range(50):
        starts = rng.integers(0, len(corpus) - cfg.seq_len - 1, 2)
        tokens = np.stack([corpus[s:s + cfg.seq_len + 1] for s in starts])
        ours.append(t.accumulate(tokens))
        t.update(lr=3e-3, clip=1.0)
        opt.zero_grad()
        _, loss = model(torch.tensor(tokens.astype(np.int64)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ref.append(loss.item())
    ours, ref = np.array(ours), np.array(ref)
    assert np.all(np.abs(ours - ref) <= 0.02 * ref), np.max(np.abs(ours - ref) / ref)
    assert ours[-5:].mean() < ours[:5].mean() - 0.5  # it learns


def test_forward_logits_match_reference():
    t, cfg = make_trainer("gqa", "dynamic", "fp32")
    model = reference(cfg, t.state)
    tokens = tokens_for(cfg, 2, seed=2)
    logits = t.forward(tokens[:, :-1])
    ref, _ = model(torch.tensor(tokens.astype(np.int64)))
    np.testing.assert_allclose(logits, ref.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_static_pipeline_recompiles_after_each_update_and_respects_the_budget():
    t, cfg = make_trainer("mha", "static", "fp16", budget=2 * 4 * CONFIGS["mha"]["n_layers"])
    tokens = tokens_for(cfg, 1, seed=1)
    assert t.compiles_needed() == 4 * cfg.n_layers
    t.accumulate(tokens)
    assert t.compiles_needed() == 0
    t.update(lr=1e-3)
    assert t.compiles_needed() == 4 * cfg.n_layers
    t.accumulate(tokens)
    t.update(lr=1e-3)
    with pytest.raises(_native.CompileBudgetExceeded):
        t.accumulate(tokens)


def test_dynamic_pipeline_compiles_once():
    t, cfg = make_trainer("gqa", "dynamic", "fp16")
    tokens = tokens_for(cfg, 1, seed=1)
    for _ in range(3):
        t.accumulate(tokens)
        t.update(lr=1e-3)
    assert t.timings()["compiles"] == 4 and t.compiles_needed() == 0


def test_bad_inputs():
    t, cfg = make_trainer("mha", "dynamic", "fp16")
    with pytest.raises(ValueError, match="tokens"):
        t.accumulate(np.zeros((2, cfg.seq_len), np.int32))
    bad = tokens_for(cfg, 1, 0)
    bad[0, 3] = cfg.vocab_size
    with pytest.raises((IndexError, ValueError), match="vocab|token"):
        t.accumulate(bad)
    with pytest.raises(ValueError, match="precision"):
        _native.Trainer(cfg, _native.make_ref_backend(), precision="bf16")
