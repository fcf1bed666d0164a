"""The programs the ANE is handed (anetrain.ane.programs), checked against the ANE rules for every
preset, pipeline and chip family; the trainer running them end to end on the ref backend; and
where kernels run when a backend cannot take them (the fallback, said aloud)."""
import numpy as np
import pytest

import anetrain
from anetrain import _native, ane, config
from anetrain.model import Model

CHIPS = [None] + list(_native.ane_rule_families())


def parsed_io(text):
    s = _native.mil_parse_summary(text)
    return s["inputs"], s["outputs"]


@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_every_program_of_every_preset_obeys_the_ane_rules(preset, pipeline):
    c = config.model_preset(preset)
    progs = ane.programs(preset, pipeline)
    assert [p[0] for p in progs] == ["attention_forward", "ffn_forward", "ffn_backward", "attention_backward"]
    for name, text, blobs, in_layout, out_layout in progs:
        for chip in CHIPS:
            assert ane.check_program(text, chip, multi_io=False) == [], (preset, pipeline, name, chip)
        (inp,), (out,) = parsed_io(text)
        _, dtype, (one, C, h, W) = inp
        assert (one, h, dtype) == (1, 1, "fp16") and W % 32 == 0
        # input blocks: inside the input, side by side along the width, never overlapping
        assert all(ch == 0 and rows <= C for _, ch, _, rows, _ in in_layout)
        cols = [(col, col + n) for _, _, col, _, n in in_layout]
        assert all(a[1] <= b[0] for a, b in zip(cols, cols[1:])) and cols[-1][1] <= W < cols[-1][1] + 32
        # weights are blocks only in the dynamic pipeline, in llama2.c's [out, in] shape (QK-norm
        # gains [head_dim] as one column)
        shapes = dict(wq=(c.q_dim, c.dim), wk=(c.kv_dim, c.dim), wv=(c.kv_dim, c.dim), wo=(c.dim, c.q_dim),
                      w1=(c.hidden_dim, c.dim), w2=(c.dim, c.hidden_dim), w3=(c.hidden_dim, c.dim),
                      q_norm=(c.head_dim, 1), k_norm=(c.head_dim, 1))
        weights = {t: (rows, n) for t, _, _, rows, n in in_layout if t in shapes}
        if pipeline == "static":
            assert weights == {} and blobs
        else:
            assert weights and all(weights[t] == shapes[t] for t in weights)
            if name.startswith("attention"):
                assert ("q_norm" in weights) == c.qk_norm
        # output: the results one after another on the channel axis, S wide
        assert out[2][3] == c.seq_len and sum(rows for _, _, _, rows, _ in out_layout) == out[2][1]
        starts = np.cumsum([0] + [rows for _, _, _, rows, _ in out_layout])[:-1]
        assert [ch for _, ch, _, _, _ in out_layout] == list(starts)


def test_the_split_programs_break_the_rules_the_ane_shaped_ones_keep():
    small = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32)
    from anetrain import kernels

    for name, text, *_ in kernels.model_kernels(small, "dynamic"):
        rules = {line.split(": ")[1] for line in ane.check_program(text, multi_io=False)}
        # several inputs, weights shaped [1, 1, out, in]; attention puts heads on the batch axis
        assert {"io-count", "io-shape"} <= rules, name
        assert ("rank" in rules) == name.startswith("attention"), name


def tokens(cfg, n, seed):
    return np.random.default_rng(seed).integers(0, cfg["vocab_size"], (n, cfg["seq_len"] + 1)).astype(np.int32)


GQA = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, seq_len=32)
# the Qwen3 family: q_dim 128 != dim 64, QK-norm, rope_theta 1e6, an untied classifier
QWEN = dict(GQA, head_dim=32, qk_norm=True, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=False)


@pytest.mark.parametrize("cfg", [GQA, QWEN], ids=["gqa", "qwen"])
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_ane_shaped_training_equals_split_training(pipeline, cfg):
    # Same ops on the same fp16 values in another layout: the losses agree to the last bit.
    tok = tokens(cfg, 2, 1)
    losses = {}
    for shaped in (False, True):
        m = Model(cfg, backend="ref", pipeline=pipeline, seed=3, ane_shaped=shaped)
        assert m.ane_shaped is shaped
        losses[shaped] = [m.step(tok, lr=2e-3)[0] for _ in range(6)]
    assert losses[True] == losses[False]
    assert losses[True][-1] < losses[True][0]


def test_staged_weights_follow_every_weight_change():
    # dynamic ANE-shaped kernels read weights staged in their input buffers: a weight set by name
    # between steps must reach them, exactly as the split kernels read it directly
    tok = tokens(GQA, 1, 2)
    out = []
    for shaped in (False, True):
        m = Model(GQA, backend="ref", pipeline="dynamic", seed=4, ane_shaped=shaped)
        m.step(tok, lr=1e-3)
        w = m.get("layers.1.feed_forward.w2")
        m.set("layers.1.feed_forward.w2", w * 1.5)
        out.append(m.forward(tok[:, :-1]))
    np.testing.assert_array_equal(out[0], out[1])


def test_ane_shaped_needs_whole_64_byte_rows():
    with pytest.raises(ValueError, match="seq_len in multiples of 32"):
        Model(dict(GQA, seq_len=48), backend="ref", ane_shaped=True)


def rule_checked_fallback(strict=False):
    """What backend "auto" is on a Mac, with the ref backend behind the ANE's rule check standing
    in for the ANE: programs the rules refuse run on the plain ref backend."""
    primary = _native.make_rule_checked_backend(_native.make_ref_backend())
    return _native.make_fallback_backend(primary, _native.make_ref_backend(), strict)


def test_placement_is_reported_and_fallback_is_said_aloud():
    split = Model(GQA, backend=rule_checked_fallback(), pipeline="dynamic", seed=1, ane_shaped=False)
    split.prepare()
    places = split.placements()
    assert [p[0] for p in places] == ["attention_forward", "ffn_forward", "ffn_backward", "attention_backward"]
    assert all(reason.startswith("ref: kernel '") and "breaks the ANE rules" in reason for _, _, reason in places)
    shaped = Model(GQA, backend=rule_checked_fallback(), pipeline="dynamic", seed=1, ane_shaped=True)
    shaped.prepare()
    assert all(reason == "" for _, _, reason in shaped.placements())


def test_strict_placement_fails_at_start_naming_the_kernel_and_rule():
    m = Model(GQA, backend=rule_checked_fallback(strict=True), pipeline="dynamic", seed=1, ane_shaped=False)
    with pytest.raises(anetrain.BackendError, match=r"kernel 'attention_forward' breaks the ANE rules.*io-count"):
        m.prepare()


def test_a_refused_program_spends_no_compile_budget():
    checked = _native.make_rule_checked_backend(_native.make_ref_backend(compile_budget=5))
    from anetrain import kernels

    bad = kernels.model_kernels(GQA, "dynamic")[0][1]
    with pytest.raises(anetrain.BackendError, match="breaks the ANE rules"):
        checked.compile(bad, {}, "bad")
    assert checked.compiles == 0 and checked.remaining == 5
    name, good, blobs, *_ = ane.programs(GQA, "dynamic")[1]
    checked.compile(good, blobs, name)
    assert checked.compiles == 1 and checked.remaining == 4


@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_respelling_in_the_verbose_dialect_is_what_the_builder_writes_there(pipeline, rng):
    # M1/M2 try program(1.3)/ios18 first and the verbose dialect when that does not parse: the
    # backend respells the program it was given, which must equal generating it in that dialect
    shape = dict(dim=GQA["dim"], hidden_dim=96, n_heads=4, n_kv_heads=2, seq_len=32)
    weights = ane._random_layer_weights(config.ModelConfig(**dict(GQA, hidden_dim=96)))
    w = weights if pipeline == "static" else None
    for name in _native.model_kernel_names():
        plain, blobs, *_ = _native.model_kernel(name, shape, pipeline, "fp16", "1.3/ios18", w, False, True)
        verbose, *_ = _native.model_kernel(name, shape, pipeline, "fp16", "1.0/ios16-verbose", w, False, True)
        respelled = _native.mil_respell(plain, "1.0/ios16-verbose")
        assert respelled == _native.mil_canonical(verbose), name
        assert respelled.startswith("program(1.0)") and 'tensor<string, []>("' in respelled
        assert ane.check_program(respelled, "M1", multi_io=False) == []
        assert any("dialect" in v for v in ane.check_program(respelled, "M4", multi_io=False))
        assert _native.mil_respell(respelled, "1.3/ios18") == _native.mil_canonical(plain)
        # and the ref backend computes the same from either spelling
        from anetrain import kernels
        k1 = kernels.compile(plain, blobs, backend="ref")
        k2 = kernels.compile(respelled, blobs, backend="ref")
        x = (rng.standard_normal(k1.inputs[0].shape) * 0.1).astype(np.float16)
        np.testing.assert_array_equal(k1(x), k2(x))


@pytest.mark.parametrize("cfg", [GQA, QWEN], ids=["gqa", "qwen"])
@pytest.mark.parametrize("pipeline", ["static", "dynamic"])
def test_each_ane_shaped_kernel_gives_the_split_kernels_outputs_bitwise(pipeline, cfg, rng):
    # the same ops on the same fp16 values, packed differently: identical results, kernel by kernel
    from anetrain import kernels

    c = config.ModelConfig(**dict(cfg, hidden_dim=96))
    shape = config.kernel_shape(c)
    w = ane._random_layer_weights(c, seed=5)
    w = {k: v * 25 for k, v in w.items()}  # ~N(0, 0.5): large enough to exercise every op
    S = shape["seq_len"]
    for name in _native.model_kernel_names():
        common = (name, shape, pipeline, "fp16", "1.3/ios18", w if pipeline == "static" else None, False)
        split_text, split_blobs, split_in, split_out, _, _ = _native.model_kernel(*common, False)
        ane_text, ane_blobs, _, _, in_layout, out_layout = _native.model_kernel(*common, True)
        acts = {n: rng.standard_normal((1, rows, 1, S)).astype(np.float16)
                for n, _, _, rows, cols in in_layout if n not in w}
        split = kernels.compile(split_text, split_blobs, backend="ref")
        feed = [acts[n] if n in acts else w[n].reshape(1, 1, len(w[n]), -1).astype(np.float16) for n in split_in]
        want = split(*feed)
        want = want if isinstance(want, tuple) else (want,)
        packed = kernels.compile(ane_text, ane_blobs, backend="ref")
        x = np.zeros(packed.inputs[0].shape, np.float16)
        for n, ch, col, rows, cols in in_layout:
            x[0, ch:ch + rows, 0, col:col + cols] = acts[n][0, :, 0, :] if n in acts else w[n].reshape(rows, cols)
        got = packed(x)
        assert [o[0] for o in out_layout] == split_out, name
        for (n, ch, _, rows, _), ref in zip(out_layout, want):
            np.testing.assert_array_equal(got[:, ch:ch + rows], ref, err_msg=f"{name}.{n}")
