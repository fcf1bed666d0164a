"""Layer 4: the native training step against PyTorch autograd (anetrain/torch_reference.py).

The trainer runs every layer through the generated MIL kernels on the ref backend. In fp32
precision the programs carry fp32 tensors and nothing is rounded, so loss and gradients must
match the float64 PyTorch reference tightly; in fp16 precision (what the ANE computes) they
must match within fp16 accuracy.
"""
import numpy as np
import pytest

from anetrain import _native

from _optional_torch import torch, torch_ref  # PyTorch is the reference model: tests marked torch

# The Qwen3 family in small: heads of head_dim 32, so q_dim 128 != dim 64; GQA 4/2; QK-norm;
# rope_theta 1e6; the classifier tied and untied.
QWEN = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, vocab_size=59, hidden_dim=96, seq_len=16,
            qk_norm=True, rope_theta=1e6, norm_eps=1e-6)
CONFIGS = {
    "mha": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=67, hidden_dim=64, seq_len=16),
    "gqa": dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=53, hidden_dim=0, seq_len=12),
    "qwen": QWEN,
    "qwen_untied": dict(QWEN, tie_embeddings=False),
}


def make_trainer(name, pipeline, precision, seed=3, budget=-1, ane_shaped=False):
    # the ANE-shaped programs (what the ANE runs) need seq_len a multiple of 32
    cfg = _native.ModelConfig(**dict(CONFIGS[name], **({"seq_len": 32} if ane_shaped else {})))
    backend = _native.make_ref_backend(compile_budget=budget, fp16_rounding=precision == "fp16")
    t = _native.Trainer(cfg, backend, pipeline=pipeline, precision=precision, ane_shaped=int(ane_shaped))
    assert t.ane_shaped == ane_shaped
    t.state.init_random(seed)
    if cfg.qk_norm:  # gains of 1 would hide a gain used in the wrong place
        perturb_gains(t.state, seed)
    return t, cfg


def perturb_gains(state, seed):
    rng = np.random.default_rng(seed)
    for n in state.names():
        if n.endswith("norm"):
            state.set(n, (1 + 0.3 * rng.standard_normal(state.get(n).shape)).astype(np.float32))


def reference(cfg, state):
    return torch_ref.build(cfg, {n: state.get(n) for n in state.names()}, dtype=torch.float64)


def tokens_for(cfg, batch, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len + 1)).astype(np.int32)


def mean_grads(t):
    scale = 1.0 / (t.loss_scale * t.pending_sequences)
    return {n: t.state.get(n, "grad") * scale for n in t.state.names()}


@pytest.mark.torch
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


@pytest.mark.torch
@pytest.mark.parametrize("ane_shaped", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_fp16_loss_and_gradients_within_half_precision(name, pipeline, ane_shaped):
    t, cfg = make_trainer(name, pipeline, "fp16", ane_shaped=ane_shaped)
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


ADAMW_CASES = [("gqa", p, prec, shaped) for p in ("static", "dynamic")
               for prec, shaped in (("fp16", False), ("fp32", False), ("fp16", True))]
ADAMW_CASES += [("qwen_untied", "dynamic", "fp16", True)]  # the Qwen3 family as the ANE would train it


@pytest.mark.torch
@pytest.mark.parametrize("name,pipeline,precision,ane_shaped", ADAMW_CASES)
def test_fifty_adamw_steps_track_pytorch(name, pipeline, precision, ane_shaped):
    t, cfg = make_trainer(name, pipeline, precision, seed=5, ane_shaped=ane_shaped)
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


@pytest.mark.torch
@pytest.mark.parametrize("name", ["gqa", "qwen", "qwen_untied"])
def test_forward_logits_match_reference(name):
    t, cfg = make_trainer(name, "dynamic", "fp32")
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


@pytest.mark.parametrize("change", ["set", "flat", "init_random"])
def test_static_kernels_follow_weights_changed_between_accumulations(change):
    """The static pipeline bakes weights into its kernels: weights changed by name, through a
    live view or by a re-init after the kernels were built must be what the next accumulation
    uses (gradients equal to a fresh trainer's at those weights)."""
    t, cfg = make_trainer("mha", "static", "fp32")
    tokens = tokens_for(cfg, 1, seed=4)
    t.accumulate(tokens)
    t.state.zero_grads()
    w = "layers.1.feed_forward.w2"
    if change == "set":
        t.state.set(w, t.state.get(w) * np.float32(1.5))
    elif change == "flat":
        view = t.state.flat("weight")
        view *= np.float32(0.75)  # written after the view was handed out
    else:
        t.state.init_random(11)
    assert t.compiles_needed() == 4 * cfg.n_layers
    loss = t.accumulate(tokens)
    fresh = _native.Trainer(cfg, _native.make_ref_backend(fp16_rounding=False), pipeline="static", precision="fp32")
    for n in t.state.names():
        fresh.state.set(n, t.state.get(n))
    assert loss == fresh.accumulate(tokens)
    for n in t.state.names():
        np.testing.assert_array_equal(t.state.get(n, "grad"), fresh.state.get(n, "grad"), err_msg=n)


def test_a_failed_compile_leaves_no_partial_kernel_set():
    """With a budget for only part of the static kernels, accumulate fails, and keeps failing the
    same way rather than running on the layers that did compile."""
    t, cfg = make_trainer("mha", "static", "fp16", budget=4 * CONFIGS["mha"]["n_layers"] - 1)
    tokens = tokens_for(cfg, 1, seed=1)
    for _ in range(2):
        with pytest.raises(_native.CompileBudgetExceeded):
            t.accumulate(tokens)
        assert t.compiles_needed() == 4 * cfg.n_layers


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


def step_twice(t, tokens):
    """(losses, norm, gradients, weights) of an accumulate, an update and another accumulate."""
    losses = [t.accumulate(tokens)]
    grads = {n: t.state.get(n, "grad") for n in t.state.names()}
    norm = t.update(lr=1e-2)
    losses.append(t.accumulate(tokens))
    return losses, norm, grads, {n: t.state.get(n) for n in t.state.names()}


def assert_same_bits(a, b, label):
    """The gradients and weights of two step_twice results are bitwise equal."""
    for n in a[2]:
        np.testing.assert_array_equal(a[2][n], b[2][n], err_msg=f"{n} grad, {label}")
        np.testing.assert_array_equal(a[3][n], b[3][n], err_msg=f"{n}, {label}")


def test_dw_on_a_worker_thread_gives_identical_results():
    """The ANE path overlaps dW sgemms with kernel evaluation on a worker thread; the same
    arithmetic in the same order must give bit-identical gradients and weights."""
    cfg = _native.ModelConfig(**CONFIGS["gqa"])
    results = []
    for overlap in (0, 1):
        t = _native.Trainer(cfg, _native.make_ref_backend(), pipeline="dynamic", overlap_dw=overlap)
        t.state.init_random(8)
        results.append(step_twice(t, tokens_for(cfg, 3, seed=8)))
    assert results[0][0] == results[1][0]
    assert_same_bits(results[0], results[1], "dW on a worker thread")


@pytest.mark.parametrize("pipeline,precision", [("dynamic", "fp16"), ("static", "fp32")])
def test_the_thread_count_does_not_change_a_bit(pipeline, precision):
    """Every parallel loop splits work so that each output element is computed by one thread in a
    fixed order: 1, 2 and 3 pool threads (3 splits unevenly) give the same losses, gradients and
    weights. The suite's xdist workers run on their share of the cores (one thread each on two
    cores, tests/conftest.py), so the threaded paths are exercised here on purpose, with shapes
    large enough to be split."""
    import anetrain

    cfg = _native.ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, hidden_dim=384,
                              seq_len=64)
    tokens = tokens_for(cfg, 2, seed=5)
    before = anetrain.info()["threads"]
    results = []
    try:
        for threads in (1, 2, 3):
            anetrain.set_num_threads(threads)
            backend = _native.make_ref_backend(fp16_rounding=precision == "fp16")
            t = _native.Trainer(cfg, backend, pipeline=pipeline, precision=precision)
            t.state.init_random(6)
            results.append(step_twice(t, tokens))
    finally:
        anetrain.set_num_threads(before)
    for threads, r in zip((2, 3), results[1:]):
        assert r[0] == results[0][0] and r[1] == results[0][1], threads  # losses, norm
        assert_same_bits(results[0], r, f"{threads} threads")


@pytest.mark.parametrize("pipeline,precision", [("dynamic", "fp16"), ("static", "fp32")])
def test_probs_tap_gives_identical_results(pipeline, precision):
    """Passing the attention probabilities from the forward kernel to the backward one (the ref
    backend's default) instead of recomputing them there (the ANE's) computes the same values
    from the same q and k: losses, gradients and weights must be bitwise equal over steps."""
    cfg = _native.ModelConfig(**CONFIGS["gqa"])
    results = []
    for tap in (0, 1):
        t = _native.Trainer(cfg, _native.make_ref_backend(), pipeline=pipeline, precision=precision, probs_tap=tap)
        t.state.init_random(9)
        losses, grads = [], []
        for step in range(3):
            losses.append(t.accumulate(tokens_for(cfg, 2, seed=20 + step)))
            grads.append(_grads(t))
            t.update(lr=1e-2)
        results.append((losses, grads, {n: t.state.get(n) for n in t.state.names()}))
    (l0, g0, w0), (l1, g1, w1) = results
    assert l0 == l1
    for a, b in zip(g0, g1):
        for n in a:
            np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    for n in w0:
        np.testing.assert_array_equal(w0[n], w1[n], err_msg=n)


def _grads(t):
    return {n: t.state.get(n, "grad") for n in t.state.names()}


def _norm(grads, scale):
    return float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))) * scale


@pytest.mark.parametrize("overlap", [0, 1])
@pytest.mark.parametrize("name", ["gqa", "qwen_untied"])
def test_gradients_after_an_update_read_as_zero_and_the_next_step_starts_fresh(name, overlap):
    """update() leaves the gradient buffer stale instead of clearing it (the next accumulation
    overwrites it, or zeroes what it only adds to: the norm gains, an untied embedding): reading it
    in between gives zeros, and the next step's gradients are exactly those of a fresh trainer at
    the updated weights."""
    cfg = _native.ModelConfig(**CONFIGS[name])
    t = _native.Trainer(cfg, _native.make_ref_backend(), pipeline="dynamic", overlap_dw=overlap)
    t.state.init_random(5)
    first, second = tokens_for(cfg, 2, seed=1), tokens_for(cfg, 1, seed=2)
    t.accumulate(first)
    assert any(g.any() for g in _grads(t).values())
    t.update(lr=1e-2)
    assert not any(g.any() for g in _grads(t).values())  # zeros, as before the lazy clearing
    t.accumulate(second)  # reading made them zero for real; now stale again after the next update
    after_read = _grads(t)
    t.update(lr=1e-2)
    weights = {n: t.state.get(n) for n in t.state.names()}
    t.accumulate(second)  # this time nothing read the stale gradients: overwritten in place
    got = _grads(t)
    fresh = _native.Trainer(cfg, _native.make_ref_backend(), pipeline="dynamic", overlap_dw=overlap)
    for n, w in weights.items():
        fresh.state.set(n, w)
    fresh.accumulate(second)
    for n, g in _grads(fresh).items():
        np.testing.assert_array_equal(got[n], g, err_msg=n)
    assert any(not np.array_equal(after_read[n], got[n]) for n in got)  # the weights did change


@pytest.mark.parametrize("batches", [[2], [1, 1]])
def test_update_norm_is_the_norm_of_the_accumulated_gradients(batches):
    """The norm update() returns is that of the gradients it found (one accumulate() call or
    several, the second step's overwriting stale ones), a gradient set by hand included."""
    cfg = _native.ModelConfig(**CONFIGS["mha"])
    t = _native.Trainer(cfg, _native.make_ref_backend(), pipeline="dynamic")
    t.state.init_random(6)
    for step in range(2):
        for i, b in enumerate(batches):
            t.accumulate(tokens_for(cfg, b, seed=10 * step + i))
        scale = 1.0 / (t.loss_scale * t.pending_sequences)
        grads = _grads(t)
        if step == 1:  # changed by hand after the accumulation: the norm must see it
            w1 = "layers.0.feed_forward.w1"
            grads[w1] = grads[w1] * np.float32(3)
            t.state.set(w1, grads[w1], "grad")
        want = _norm(grads, scale)
        assert t.update(lr=1e-3, clip=0.0) == pytest.approx(want, rel=1e-9)


def test_a_live_gradient_view_is_cleared_eagerly():
    """state.flat('grad') hands out the buffer itself: from then on update() zeroes it in place."""
    cfg = _native.ModelConfig(**CONFIGS["mha"])
    t = _native.Trainer(cfg, _native.make_ref_backend(), pipeline="dynamic")
    t.state.init_random(7)
    view = t.state.flat("grad")
    t.accumulate(tokens_for(cfg, 1, seed=3))
    assert view.any()
    t.update(lr=1e-3)
    assert not view.any()
