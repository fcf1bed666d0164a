"""The Python face of the trainer: anetrain.model.Model."""
import numpy as np
import pytest

from anetrain.model import Model

CFG = dict(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=8)


def test_step_learns_and_reports_timings():
    m = Model(CFG, backend="ref", seed=3)
    tokens = np.tile(np.arange(9, dtype=np.int32), (2, 1))
    losses = []
    for _ in range(15):
        loss, t = m.step(tokens, lr=1e-2)
        losses.append(loss)
    assert losses[0] == pytest.approx(np.log(40), rel=0.15)  # near uniform at init
    assert losses[-1] < 0.5 * losses[0]
    for key in ("kernels_ms", "io_ms", "cpu_ops_ms", "dw_ms", "optimizer_ms", "compile_ms", "total_ms", "grad_norm"):
        assert key in t and t[key] >= 0
    assert t["kernel_evals"] == 2 * 4 * CFG["n_layers"]
    assert m.step_count == 15
    assert m.forward(tokens[:, :-1]).shape == (2, 8, 40)


def test_tensors_by_llama2c_name_and_state_round_trip():
    a = Model(CFG, backend="ref", seed=1)
    b = Model(CFG, backend="ref", seed=2)
    np.testing.assert_array_equal(a.get("layers.0.attention.wq.weight"), a.get("layers.0.attention.wq"))
    assert a.get("layers.0.attention.wk").shape == (16, 32)
    assert a.get("norm").shape == (32,)
    tokens = np.arange(18, dtype=np.int32).reshape(2, 9) % 40
    a.step(tokens, lr=1e-3)
    b.load_state_dict(a.state_dict())
    b.step_count = a.step_count
    la, _ = a.step(tokens, lr=1e-3)
    lb, _ = b.step(tokens, lr=1e-3)
    assert la == lb
    np.testing.assert_array_equal(a.get("tok_embeddings", "m"), b.get("tok_embeddings", "m"))


def test_errors():
    with pytest.raises(ValueError, match="unknown model config"):
        Model(dict(CFG, width=3), backend="ref")
    with pytest.raises(ValueError, match="n_heads"):
        Model(dict(CFG, dim=30), backend="ref")
    m = Model(CFG, backend="ref", seed=0)
    with pytest.raises(KeyError, match="unknown parameter"):
        m.get("layers.9.attention.wq")
    with pytest.raises(ValueError):
        m.set("norm", np.zeros(3, np.float32))
    with pytest.raises(KeyError, match="kind"):
        m.load_state_dict({"layers.0.attention.wq": np.zeros((32, 32), np.float32)})


QWEN_LIKE = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=40, seq_len=8, qk_norm=True)


@pytest.mark.parametrize("cfg", [CFG, QWEN_LIKE, dict(QWEN_LIKE, tie_embeddings=False)],
                         ids=["gqa", "qwen", "qwen_untied"])
def test_the_gradient_hand_over_gives_every_gradient_once_and_final(cfg):
    # what data-parallel training all-reduces while the backward pass goes on: each range must be
    # final when handed over, and together they must be the whole gradient buffer, once
    m = Model(cfg, backend="ref", seed=5)
    tokens = (np.arange(27, dtype=np.int32).reshape(3, 9) * 7) % 40
    grads, seen = m.flat("grad"), []
    m.accumulate(tokens, grads_ready=lambda off, n: seen.append((off, n, grads[off:off + n].copy())))
    final = grads.copy()
    assert sorted((o, n) for o, n, _ in seen) == sorted(m.grads_ready_ranges)
    covered = np.zeros(final.size, dtype=np.int32)
    for off, n, values in seen:
        covered[off:off + n] += 1
        np.testing.assert_array_equal(values, final[off:off + n])
    assert (covered == 1).all()


# Weight gradients of this shape span several of the norm's 64K-element blocks, so the trainer
# sums their blocks during the backward pass (ModelState::sum_grads) instead of in update().
WIDE = dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=8)


def _norm_of(grads, loss_scale, sequences):
    return float(np.sqrt(np.sum(np.square(grads.astype(np.float64))))) / (loss_scale * sequences)


def test_gradient_norm_gathered_in_the_backward_pass_has_the_one_pass_bits():
    rng = np.random.default_rng(7)
    fused = Model(WIDE, backend="ref", seed=5)
    one_pass = Model(WIDE, backend="ref", seed=5)
    grads = one_pass.flat("grad")  # a live view: its model sums the gradients in update(), in one pass
    for step in range(3):
        for _ in range(2):  # two accumulations of two sequences: the last one finishes the gradients
            tokens = rng.integers(0, WIDE["vocab_size"], (2, WIDE["seq_len"] + 1)).astype(np.int32)
            assert fused.accumulate(tokens) == one_pass.accumulate(tokens)
        expected = _norm_of(grads, 256.0, 4)
        clip = 0.5 * expected if step % 2 else 0.0  # clipping on every other step
        norm = fused.update(lr=1e-3, clip=clip)
        assert norm == one_pass.update(lr=1e-3, clip=clip)
        assert norm == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(fused.flat("weight"), one_pass.flat("weight"))


@pytest.mark.parametrize("view_first", [True, False], ids=["view_before", "view_after"])
def test_gradients_written_through_a_view_count_in_the_norm(view_first):
    # what a data-parallel all-reduce does: the summed gradients replace the local ones in place
    m = Model(WIDE, backend="ref", seed=5)
    tokens = np.random.default_rng(8).integers(0, WIDE["vocab_size"], (1, WIDE["seq_len"] + 1)).astype(np.int32)
    view = m.flat("grad") if view_first else None
    m.accumulate(tokens)
    if view is None:
        view = m.flat("grad")
    view *= 3.0
    expected = _norm_of(view, 256.0, 1)  # (the update clears the gradients)
    assert m.update(lr=1e-3, clip=0.0) == pytest.approx(expected, rel=1e-12)
