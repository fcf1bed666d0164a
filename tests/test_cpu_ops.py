"""The training step's fp32 CPU ops against PyTorch autograd (float64 references).

Activations are channel-major [C, S] for one sequence (the ANE's [1, C, 1, S]); the references
transpose to PyTorch's [S, C] and back. The last tests chain the ops into llama2.c's whole model
and compare loss and every gradient with anetrain/torch_reference.py.
"""
import numpy as np
import pytest

from _optional_torch import torch, torch_ref  # PyTorch is the reference for the CPU ops: tests marked torch
from cpu_model import cpu_model_step
from anetrain import _native as nat

F = torch.nn.functional if torch else None

# Column counts that straddle the ops' per-task column chunks (32) and the 2-thread split.
SEQ_LENS = [1, 7, 33, 70]
# (n_heads, n_kv_heads, head_dim): multi-head, grouped (2 and 3 per group), multi-query.
HEADS = [(4, 4, 8), (4, 2, 6), (6, 2, 4), (6, 1, 10)]


def assert_close(actual, expected, rtol=1e-5):
    """Element-wise match to rtol relative to the largest reference magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def vjp(fn, inputs, upstream):
    """Gradients of sum(fn(*inputs) * upstream) w.r.t. each input, in float64."""
    ts = [t64(a, grad=True) for a in inputs]
    (fn(*ts) * t64(upstream)).sum().backward()
    return [t.grad.numpy() for t in ts]


# ------------------------------------------------------------------------------ embedding


@pytest.mark.torch
@pytest.mark.parametrize("S", SEQ_LENS)
def test_embedding_forward_and_scatter_add(rng, S):
    vocab, dim = 11, 24
    E = f32(rng, vocab, dim)
    tok = rng.integers(0, vocab, S).astype(np.int32)
    tok[0] = tok[-1]  # a repeated token must accumulate, not overwrite
    x = nat.cpu_embedding_fwd(E, tok)
    assert_close(x, E[tok].T)

    dx = f32(rng, dim, S)
    dE = f32(rng, vocab, dim)
    start = dE.copy()
    nat.cpu_embedding_bwd(dx, tok, dE)
    (gE,) = vjp(lambda e: F.embedding(torch.tensor(tok.astype(np.int64)), e).T, [E], dx)
    assert_close(dE, start + gE)


@pytest.mark.parametrize("bad", [-1, 11])
def test_embedding_rejects_token_outside_vocab(bad):
    E = np.zeros((11, 4), np.float32)
    tok = np.array([0, bad, 3], np.int32)
    with pytest.raises(IndexError, match=f"id {bad} at position 1 is outside the vocabulary"):
        nat.cpu_embedding_fwd(E, tok)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        nat.cpu_embedding_bwd(np.zeros((4, 3), np.float32), tok, E)


# ------------------------------------------------------------------------------ RMSNorm


def rmsnorm_ref(x, g, eps=1e-5):  # x [C, S] -> [C, S]
    xt = x.T
    return (xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + eps) * g).T


@pytest.mark.torch
@pytest.mark.parametrize("S", SEQ_LENS)
@pytest.mark.parametrize("C", [8, 96])
def test_rmsnorm_forward(rng, C, S):
    x = f32(rng, C, S, scale=3.0)
    g = f32(rng, C)
    y, rrms = nat.cpu_rmsnorm_fwd(x, g, 1e-5)
    assert_close(y, rmsnorm_ref(t64(x), t64(g)).numpy())
    assert_close(rrms, 1 / np.sqrt((x.astype(np.float64) ** 2).mean(0) + 1e-5))


@pytest.mark.torch
@pytest.mark.parametrize("S", SEQ_LENS)
@pytest.mark.parametrize("C", [8, 96])
def test_rmsnorm_backward_accumulates_dx_and_dgamma(rng, C, S):
    x, g, dy = f32(rng, C, S), f32(rng, C), f32(rng, C, S)
    _, rrms = nat.cpu_rmsnorm_fwd(x, g, 1e-5)
    dx, dg = f32(rng, C, S), f32(rng, C)
    dx0, dg0 = dx.copy(), dg.copy()
    nat.cpu_rmsnorm_bwd(dy, x, g, rrms, dx, dg)
    gx, gg = vjp(rmsnorm_ref, [x, g], dy)
    assert_close(dx - dx0, gx)
    assert_close(dg - dg0, gg)


@pytest.mark.torch
def test_rmsnorm_uses_the_given_eps(rng):
    x = f32(rng, 4, 5, scale=1e-3)  # tiny activations: eps dominates the mean square
    g = np.ones(4, np.float32)
    y, _ = nat.cpu_rmsnorm_fwd(x, g, 1e-2)
    assert_close(y, rmsnorm_ref(t64(x), t64(g), eps=1e-2).numpy())


# ------------------------------------------------------------------------------ RoPE


def rope_ref(x, n_heads, theta=10000.0):  # x [n_heads*hd, S] via torch_ref's [B, S, heads, hd] layout
    C, S = x.shape
    hd = C // n_heads
    cos, sin = torch_ref.precompute_rope(hd, S, theta, torch.float64)
    heads = x.reshape(n_heads, hd, S).permute(2, 0, 1)[None]
    return torch_ref.apply_rotary_emb(heads, cos, sin)[0].permute(1, 2, 0).reshape(C, S)


@pytest.mark.torch
@pytest.mark.parametrize("S", SEQ_LENS)
@pytest.mark.parametrize("n_heads,n_kv_heads,hd", HEADS)
def test_rope_forward_and_backward_on_q_and_k(rng, S, n_heads, n_kv_heads, hd):
    for heads in (n_heads, n_kv_heads):  # Q [n_heads*hd, S] and K [n_kv_heads*hd, S]
        x = f32(rng, heads * hd, S)
        assert_close(nat.cpu_rope_fwd(x, heads), rope_ref(t64(x), heads).numpy())
        dy = f32(rng, heads * hd, S)
        (gx,) = vjp(lambda t: rope_ref(t, heads), [x], dy)
        assert_close(nat.cpu_rope_bwd(dy, heads), gx)


def test_rope_pairs_are_adjacent_channels_with_llama2c_frequencies():
    # One head, hd 4, position 3: pair (0,1) turns by 3 rad, pair (2,3) by 3/100 rad (10000^(-2/4)).
    x = np.zeros((4, 4), np.float32)
    x[0, 3] = 1.0
    x[2, 3] = 1.0
    y = nat.cpu_rope_fwd(x, 1)
    np.testing.assert_allclose(y[:, 3], [np.cos(3), np.sin(3), np.cos(0.03), np.sin(0.03)], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y[:, 0], x[:, 0])  # position 0 is not rotated


@pytest.mark.torch
def test_rope_theta_changes_the_frequencies(rng):
    x = f32(rng, 16, 9)
    assert_close(nat.cpu_rope_fwd(x, 2, 500000.0), rope_ref(t64(x), 2, 500000.0).numpy())


# ------------------------------------------------------------------------------ GQA


@pytest.mark.torch
@pytest.mark.parametrize("S", [1, 33])
@pytest.mark.parametrize("n_heads,n_kv_heads,hd", HEADS)
def test_gqa_tile_is_repeat_interleave_and_reduce_is_its_gradient(rng, S, n_heads, n_kv_heads, hd):
    kv = f32(rng, n_kv_heads * hd, S)

    def tile_ref(t):  # [n_kv*hd, S] -> torch_ref.repeat_kv on [1, S, n_kv, hd] -> [n_heads*hd, S]
        heads = t.reshape(n_kv_heads, hd, S).permute(2, 0, 1)[None]
        return torch_ref.repeat_kv(heads, n_heads // n_kv_heads)[0].permute(1, 2, 0).reshape(n_heads * hd, S)

    np.testing.assert_array_equal(nat.cpu_gqa_tile(kv, n_heads, n_kv_heads), tile_ref(t64(kv)).numpy())
    d = f32(rng, n_heads * hd, S)
    (gkv,) = vjp(tile_ref, [kv], d)
    assert_close(nat.cpu_gqa_reduce(d, n_heads, n_kv_heads), gkv)


def test_gqa_rejects_heads_that_do_not_group():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        nat.cpu_gqa_tile(np.zeros((8, 3), np.float32), 6, 4)


# ------------------------------------------------------------------------------ classifier and loss


@pytest.mark.torch
@pytest.mark.parametrize("S", [1, 33])
def test_classifier_forward_and_backward(rng, S):
    vocab, dim = 50, 24
    E, x, dl = f32(rng, vocab, dim), f32(rng, dim, S), f32(rng, vocab, S)
    assert_close(nat.cpu_classifier_fwd(E, x), E.astype(np.float64) @ x)
    dE = f32(rng, vocab, dim)
    dE0 = dE.copy()
    dx = nat.cpu_classifier_bwd(E, x, dl, dE)
    gE, gx = vjp(lambda e, t: e @ t, [E, x], dl)
    assert_close(dx, gx)
    assert_close(dE - dE0, gE)


@pytest.mark.torch
@pytest.mark.parametrize("scale", [1.0, 256.0])
@pytest.mark.parametrize("logit_scale", [1.0, 40.0])
@pytest.mark.parametrize("S", SEQ_LENS)
def test_cross_entropy_loss_and_scaled_gradient(rng, S, scale, logit_scale):
    vocab = 300
    logits = f32(rng, vocab, S, scale=logit_scale)
    tgt = rng.integers(0, vocab, S).astype(np.int32)
    loss, dl = nat.cpu_cross_entropy(logits, tgt, scale)
    lt = t64(logits, grad=True)
    ref = F.cross_entropy(lt.T, torch.tensor(tgt.astype(np.int64)))  # mean over the S positions
    (ref * scale).backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    assert_close(dl, lt.grad.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("vocab,S", [(50, 1), (1000, 33), (2500, 256)])  # one chunk; several, with a short last one
def test_fused_classifier_loss_matches_autograd(rng, vocab, S):
    dim, scale = 24, 8.0
    E, x = f32(rng, vocab, dim, scale=2.0), f32(rng, dim, S)
    tgt = rng.integers(0, vocab, S).astype(np.int32)
    tgt[0] = vocab - 1  # a target in the last chunk
    dE = f32(rng, vocab, dim)
    dE0 = dE.copy()
    loss, dx, dl = nat.cpu_classifier_loss(E, x, tgt, scale, dE)
    Et, xt = t64(E, grad=True), t64(x, grad=True)
    logits = Et @ xt
    logits.retain_grad()
    ref = F.cross_entropy(logits.T, torch.tensor(tgt.astype(np.int64)))
    (ref * scale).backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    assert_close(dl, logits.grad.numpy())
    assert_close(dx, xt.grad.numpy())
    assert_close(dE - dE0, Et.grad.numpy())


def test_cross_entropy_rejects_target_outside_vocab():
    with pytest.raises(IndexError, match="target id 5 at position 0"):
        nat.cpu_cross_entropy(np.zeros((5, 2), np.float32), np.array([5, 0], np.int32))


def test_cross_entropy_rejects_an_empty_sequence():
    with pytest.raises(ValueError, match="at least one position"):
        nat.cpu_cross_entropy(np.zeros((5, 0), np.float32), np.zeros(0, np.int32))


# ------------------------------------------------------------------------------ SwiGLU


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(3, 7), (64, 300)])
def test_swiglu_forward_and_backward(rng, shape):
    h1, h3, dg = f32(rng, *shape, scale=4.0), f32(rng, *shape), f32(rng, *shape)
    h1[0, :3] = [-100.0, 100.0, 0.0]  # saturated sigmoid both ways, and zero

    def ref(a, b):
        return F.silu(a) * b

    assert_close(nat.cpu_swiglu_fwd(h1, h3), ref(t64(h1), t64(h3)).numpy())
    dh1, dh3 = nat.cpu_swiglu_bwd(dg, h1, h3)
    g1, g3 = vjp(ref, [h1, h3], dg)
    assert_close(dh1, g1)
    assert_close(dh3, g3)


# ------------------------------------------------------------------------------ clipping and AdamW


@pytest.mark.torch
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_grad_norm_and_clip_match_clip_grad_norm(rng, max_norm):
    grads = [f32(rng, 40, 30), f32(rng, 7), f32(rng, 200_000, scale=0.01)]
    params = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = t64(g)
    ref_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()

    norm = nat.cpu_grad_norm(grads)
    assert norm == pytest.approx(ref_norm, rel=1e-9)
    s = nat.cpu_clip_scale(norm, max_norm)
    for p, g in zip(params, grads):
        nat.cpu_scale(g, s)
        assert_close(g, p.grad.numpy())
    assert (s < 1.0) == (max_norm < ref_norm)


def test_clip_scale_rejects_nonpositive_max_norm():
    with pytest.raises(ValueError, match="max_norm must be positive"):
        nat.cpu_clip_scale(1.0, 0.0)


@pytest.mark.torch
def test_adamw_matches_torch_over_steps_with_a_no_decay_group(rng):
    lr, betas, eps, wd = 1e-2, (0.9, 0.95), 1e-8, 0.1
    w_mat, w_vec = f32(rng, 30, 20), f32(rng, 20)
    tm = torch.tensor(w_mat, requires_grad=True)
    tv = torch.tensor(w_vec, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [tm], "weight_decay": wd}, {"params": [tv], "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps)
    state = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in (("mat", w_mat), ("vec", w_vec))}
    loss_scale = 256.0  # gradients arrive loss-scaled; grad_scale undoes it inside the step
    for step in range(1, 6):
        g_mat, g_vec = f32(rng, 30, 20), f32(rng, 20, scale=1e-3)
        tm.grad, tv.grad = torch.tensor(g_mat), torch.tensor(g_vec)
        opt.step()
        for name, w, g, decay in (("mat", w_mat, g_mat, True), ("vec", w_vec, g_vec, False)):
            m, v = state[name]
            nat.cpu_adamw_step(w, g * np.float32(loss_scale), m, v, step, lr, *betas, eps, wd, decay=decay,
                               grad_scale=1.0 / loss_scale)
        assert_close(w_mat, tm.detach().numpy())
        assert_close(w_vec, tv.detach().numpy())
    assert_close(state["mat"][0], opt.state[tm]["exp_avg"].numpy())
    assert_close(state["vec"][1], opt.state[tv]["exp_avg_sq"].numpy())


def test_adamw_checks_shapes_and_step():
    w = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="cpu_adamw_step: grad must be a C-contiguous float32 array of shape"):
        nat.cpu_adamw_step(w, np.zeros(5, np.float32), w.copy(), w.copy(), 1, 1e-3)
    with pytest.raises(ValueError, match="step count must start at 1"):
        nat.cpu_adamw_step(w, w.copy(), w.copy(), w.copy(), 0, 1e-3)


# ------------------------------------------------------------------------------ argument checks


def test_ops_reject_wrong_dtype_layout_and_shape():
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"cpu_rmsnorm_fwd: x must be a C-contiguous float32 .* got float64"):
        nat.cpu_rmsnorm_fwd(x.astype(np.float64), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="non-contiguous"):
        nat.cpu_rmsnorm_fwd(np.zeros((6, 4), np.float32).T, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"gamma must be .* shape \(4,\); got float32 \(5,\)"):
        nat.cpu_rmsnorm_fwd(x, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="tokens must be a C-contiguous int32"):
        nat.cpu_embedding_fwd(x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="dx must be a writable"):
        ro = np.zeros((4, 6), np.float32)
        ro.flags.writeable = False
        nat.cpu_rmsnorm_bwd(x, x, np.ones(4, np.float32), np.ones(6, np.float32), ro, np.zeros(4, np.float32))


# ------------------------------------------------------------------------------ the ops compose into llama2.c's model
#
# A whole training forward and backward chained from the ops (tests/cpu_model.py), checked
# against torch_ref's autograd.

COMPOSE_CONFIGS = [
    dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=67, seq_len=12),
    dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=53, hidden_dim=80, seq_len=40),
]


def random_weights(cfg, rng):
    return {name: f32(rng, *shape, scale=1.0 if len(shape) == 1 else 0.3) for name, shape, _ in cfg.param_specs()}


@pytest.mark.torch
@pytest.mark.parametrize("config", COMPOSE_CONFIGS, ids=["mha", "gqa"])
def test_cpu_ops_compose_into_llama2c_forward_and_backward(rng, config):
    cfg = nat.ModelConfig(**config)
    W = random_weights(cfg, rng)
    tokens = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1).astype(np.int32)

    loss, grads = cpu_model_step(cfg, W, tokens)

    model = torch_ref.build(cfg, W, dtype=torch.float64)
    _, ref_loss = model(torch.tensor(tokens[None].astype(np.int64)))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for name, p in model.weights().items():
        assert_close(grads[name], p.grad.numpy(), rtol=2e-5)  # torch fp32 itself is ~4e-6 off
