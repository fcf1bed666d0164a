"""The training step's fp32 CPU ops against PyTorch autograd (float64 references).

Activations are channel-major [C, S] for one sequence (the ANE's [1, C, 1, S]); the references
transpose to PyTorch's [S, C] and back. These are the ops the native trainer runs on the CPU;
the rest of the model runs as MIL kernels (tests/test_model_kernels.py), and the whole step is
checked against anetrain/torch_reference.py in tests/test_model_training.py.
"""
import numpy as np
import pytest

from _optional_torch import torch  # PyTorch is the reference for the CPU ops: tests marked torch
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










# ------------------------------------------------------------------------------ GQA






# ------------------------------------------------------------------------------ classifier and loss






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






# ------------------------------------------------------------------------------ SwiGLU




# ------------------------------------------------------------------------------ clipping and AdamW




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
    with pytest.raises(ValueError, match=r"must be a C-contiguous float32 .* got >f4"):  # big-endian bytes
        nat.cpu_rmsnorm_fwd(x.astype(">f4"), np.ones(4, np.float32))
    little = np.dtype("<f4").newbyteorder("<")  # float32 spelt out (what a file reader makes): accepted
    nat.cpu_rmsnorm_fwd(x.astype(little), np.ones(4, little))
    with pytest.raises(ValueError, match=r"gamma must be .* shape \(4,\); got float32 \(5,\)"):
        nat.cpu_rmsnorm_fwd(x, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="tokens must be a C-contiguous int32"):
        nat.cpu_embedding_fwd(x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="dx must be a writable"):
        ro = np.zeros((4, 6), np.float32)
        ro.flags.writeable = False
        nat.cpu_rmsnorm_bwd(x, x, np.ones(4, np.float32), np.ones(6, np.float32), ro, np.zeros(4, np.float32))
