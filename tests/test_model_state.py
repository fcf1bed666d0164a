"""ModelState: named storage of weights, gradients and AdamW moments; seeded init; the optimizer
update and clipping over the whole model against torch.optim.AdamW + clip_grad_norm_."""
import numpy as np
import pytest

from anetrain._native import ModelConfig, ModelState, cpu_clip_scale

CFG = dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=300, seq_len=16)


def shapes(cfg):
    return {name: shape for name, shape, _ in cfg.param_specs()}


def test_storage_is_named_and_shaped_like_llama2c(rng):
    cfg = ModelConfig(**CFG)
    s = ModelState(cfg)
    assert s.names() == list(shapes(cfg)) and s.size == cfg.param_count
    for kind in ("weight", "grad", "m", "v"):
        values = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes(cfg).items()}
        for name, a in values.items():
            s.set(name, a, kind)
        for name, a in values.items():  # no tensor overlaps another
            np.testing.assert_array_equal(s.get(name, kind), a)
    s.zero_grads()
    assert not s.get("layers.1.feed_forward.w2", "grad").any()
    assert s.get("layers.1.feed_forward.w2", "m").any()


def test_get_and_set_errors():
    s = ModelState(ModelConfig(**CFG))
    with pytest.raises(KeyError, match="unknown parameter 'layers.0.attention.wz'"):
        s.get("layers.0.attention.wz")
    with pytest.raises(ValueError, match=r"ModelState.set: layers.0.attention.wk must be .* shape \(16, 64\)"):
        s.set("layers.0.attention.wk", np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        s.get("norm", "momentum")


def test_init_random_is_seeded_with_fan_in_scales():
    cfg = ModelConfig(**CFG)
    s = ModelState(cfg)
    s.init_random(7)
    again = ModelState(cfg)
    again.init_random(7)
    other = ModelState(cfg)
    other.init_random(8)
    resid = 1 / np.sqrt(2 * cfg.n_layers)
    for name, shape in shapes(cfg).items():
        w = s.get(name)
        np.testing.assert_array_equal(w, again.get(name))
        if name.endswith("norm"):
            np.testing.assert_array_equal(w, 1.0)
            continue
        assert not np.array_equal(w, other.get(name))
        fan_in = shape[1]
        want = 0.02 if name == "tok_embeddings" else 1 / np.sqrt(fan_in)
        if name.endswith((".wo", ".w2")):
            want *= resid
        assert w.std() == pytest.approx(want, rel=0.06), name
        assert abs(w.mean()) < 5 * want / np.sqrt(w.size), name
        assert np.mean(np.abs(w) < want) == pytest.approx(0.6827, abs=0.03), name  # normal, not uniform
    # every tensor draws its own stream: same-shaped tensors are uncorrelated
    a, b = s.get("layers.0.attention.wq").ravel(), s.get("layers.1.attention.wq").ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
    assert s.step == 0 and not s.get("tok_embeddings", "grad").any()


@pytest.mark.torch
@pytest.mark.parametrize("max_norm", [1.0, 1e4])
def test_clipped_adamw_update_matches_torch(rng, max_norm):
    import torch
    from anetrain import torch_reference as torch_ref

    cfg = ModelConfig(**CFG)
    s = ModelState(cfg)
    s.init_random(3)
    model = torch_ref.build(cfg, {n: s.get(n) for n in s.names()})
    lr, betas, eps, wd, loss_scale = 3e-3, (0.9, 0.95), 1e-8, 0.1, 256.0
    opt = torch_ref.adamw(model, lr, betas, eps, wd)
    params = model.weights()
    for _ in range(4):
        for name, p in params.items():
            g = (rng.standard_normal(p.shape) * 0.05).astype(np.float32)
            p.grad = torch.tensor(g)
            s.set(name, g * np.float32(loss_scale), "grad")  # loss-scaled, as the trainer accumulates them
        ref_norm = torch.nn.utils.clip_grad_norm_(params.values(), max_norm).item()
        opt.step()
        norm = s.grad_norm() / loss_scale
        assert norm == pytest.approx(ref_norm, rel=1e-6)
        s.adamw_update(lr, *betas, eps, wd, grad_scale=cpu_clip_scale(norm, max_norm) / loss_scale)
        for name, p in params.items():
            w, ref = s.get(name), p.detach().numpy()
            np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name)
    assert s.step == 4
    state = opt.state[params["layers.1.attention.wk"]]
    np.testing.assert_allclose(s.get("layers.1.attention.wk", "v"), state["exp_avg_sq"].numpy(), rtol=1e-5,
                               atol=1e-5 * state["exp_avg_sq"].abs().max().item())




def test_flat_buffers_are_live_views_in_name_order(rng):
    cfg = ModelConfig(**CFG)
    s = ModelState(cfg)
    s.init_random(5)
    flat = s.flat("m")
    assert flat.shape == (cfg.param_count,) and flat.dtype == np.float32
    expected = rng.standard_normal(cfg.param_count).astype(np.float32)
    flat[:] = expected
    offset = 0
    for name, shape, _ in cfg.param_specs():
        n = int(np.prod(shape))
        np.testing.assert_array_equal(s.get(name, "m"), expected[offset:offset + n].reshape(shape))
        offset += n
    s.set("norm", np.full(cfg.dim, 3.0, np.float32), "m")
    assert (flat[-cfg.dim:] == 3.0).all()
    weights = s.flat()
    del s  # the view keeps the state alive
    assert weights[-1] == 1.0  # the final norm gamma, initialised to 1
