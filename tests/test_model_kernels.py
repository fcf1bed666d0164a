"""Layer 3: every generated model kernel, both pipelines, against PyTorch autograd.

Each kernel runs on the ref backend (executing its MIL text). The reference computes the same
quantities in float64 from the llama2.c definitions: forward values directly, backward values
as gradients of the forward function (so the kernels' hand-derived backward math is checked
against autograd, not against itself). Activations are [1, C, 1, S] in the kernels and [S, C]
in the reference.
"""
import math

import numpy as np
import pytest

from anetrain import _native
from anetrain.mil import unpack_weights
from _optional_torch import torch  # PyTorch is the reference for the model kernels: tests marked torch

kernels = pytest.importorskip("anetrain.kernels", reason="needs the ref backend (anetrain.kernels)")

SHAPES = {
    "mha": dict(dim=32, hidden_dim=64, n_heads=4, n_kv_heads=4, seq_len=16),
    "gqa": dict(dim=48, hidden_dim=96, n_heads=6, n_kv_heads=2, seq_len=12),
    # ANE-shaped programs need seq_len a multiple of 32; GQA with 3 query heads per KV head
    "gqa_ane": dict(dim=48, hidden_dim=80, n_heads=6, n_kv_heads=2, seq_len=32),
    # the Qwen3 family: head_dim 16 (q_dim 64 != dim 48), QK-norm, rope_theta 1e6; split and ANE-shaped
    "qwen": dict(dim=48, hidden_dim=80, n_heads=4, n_kv_heads=2, head_dim=16, seq_len=16, qk_norm=True,
                 rope_theta=1e6, norm_eps=1e-6),
    "qwen_ane": dict(dim=48, hidden_dim=80, n_heads=4, n_kv_heads=2, head_dim=16, seq_len=32, qk_norm=True,
                     rope_theta=1e6, norm_eps=1e-6),
}


def head_dim(shape):
    return shape.get("head_dim") or shape["dim"] // shape["n_heads"]


def make_weights(shape, seed):
    rng = np.random.default_rng(seed)
    d, h, hd = shape["dim"], shape["hidden_dim"], head_dim(shape)
    q, kv = hd * shape["n_heads"], hd * shape["n_kv_heads"]
    sizes = dict(wq=(q, d), wk=(kv, d), wv=(kv, d), wo=(d, q), w1=(h, d), w2=(d, h), w3=(h, d))
    w = {k: (rng.standard_normal(s) / math.sqrt(s[1])).astype(np.float32) for k, s in sizes.items()}
    if shape.get("qk_norm"):
        w.update({k: (1 + 0.3 * rng.standard_normal(hd)).astype(np.float32) for k in ("q_norm", "k_norm")})
    return w


def is_weight(name):
    return name.startswith("w") or name in ("q_norm", "k_norm")


def qk_norm_ref(x, gains, n_heads, eps):
    """transformers' Qwen3 QK-norm: RMSNorm of each head of x [S, n_heads*hd] over its hd channels,
    times gains [S, hd] (the gains given per position, so autograd yields their gradient summed
    over heads for each position, as the kernels return it)."""
    S = x.shape[0]
    xh = x.reshape(S, n_heads, -1)
    y = xh * torch.rsqrt(xh.pow(2).mean(-1, keepdim=True) + eps) * gains[:, None, :]
    return y.reshape(S, -1)


def q_and_k(xn, W, shape):
    """(q, k) after the projections, QK-norm (with the gains as [S, hd] leaves) and RoPE; and the
    projections and gain leaves for their gradients."""
    H, KVH, S = shape["n_heads"], shape["n_kv_heads"], xn.shape[0]
    theta = shape.get("rope_theta", 10000.0)
    q_pre, k_pre = xn @ W["wq"].T, xn @ W["wk"].T
    gains = {}
    q_in, k_in = q_pre, k_pre
    if shape.get("qk_norm"):
        for g in ("q_norm", "k_norm"):
            gains[g] = W[g].expand(S, -1).clone().requires_grad_(True)
        q_in = qk_norm_ref(q_pre, gains["q_norm"], H, shape["norm_eps"])
        k_in = qk_norm_ref(k_pre, gains["k_norm"], KVH, shape["norm_eps"])
    return rope_ref(q_in, H, theta), rope_ref(k_in, KVH, theta), q_pre, k_pre, gains


def rope_ref(x, n_heads, theta=10000.0):
    """llama2.c's RoPE on adjacent pairs: x [S, n_heads*hd] (torch, float64)."""
    S, C = x.shape
    hd = C // n_heads
    freqs = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(S, dtype=torch.float64), freqs)  # [S, hd/2]
    xr = x.reshape(S, n_heads, hd // 2, 2)
    c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    e, o = xr[..., 0], xr[..., 1]
    return torch.stack([e * c - o * s, e * s + o * c], dim=-1).reshape(S, C)


def probs_ref(q, k, n_heads, n_kv_heads):
    """Causal softmax of roped q [S, H*hd] against k [S, KVH*hd]: [H, S, S] (Q head h uses KV
    head h // rep), which is the kernels' [KVH, rep, S, S] flattened."""
    S = q.shape[0]
    hd = q.shape[1] // n_heads
    rep = n_heads // n_kv_heads
    qh = q.reshape(S, n_heads, hd).transpose(0, 1)
    kh = k.reshape(S, n_kv_heads, hd).transpose(0, 1).repeat_interleave(rep, dim=0)
    scores = qh @ kh.transpose(1, 2) / math.sqrt(hd)
    mask = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)


def attention_ref(q, k, v, n_heads, n_kv_heads):
    """Causal attention on roped q [S, H*hd], k/v [S, KVH*hd]; KV head of Q head h is h // rep."""
    S = q.shape[0]
    hd = q.shape[1] // n_heads
    vh = v.reshape(S, n_kv_heads, hd).transpose(0, 1).repeat_interleave(n_heads // n_kv_heads, dim=0)
    return (probs_ref(q, k, n_heads, n_kv_heads) @ vh).transpose(0, 1).reshape(S, n_heads * hd)


def to_kernel(x):  # [S, C] -> [1, C, 1, S]
    return np.ascontiguousarray(x.detach().numpy().T[None, :, None, :])


def from_kernel(y):  # [1, C, 1, S] -> [S, C]
    return np.asarray(y, dtype=np.float64)[0, :, 0, :].T


def run_kernel(name, shape, pipeline, dtype, w, inputs, probs_tap=False, ane_shaped=False):
    text, blobs, in_names, out_names, in_layout, out_layout = _native.model_kernel(
        name, shape, pipeline, dtype, "1.3/ios18", w if pipeline == "static" else None, probs_tap, ane_shaped)
    k = kernels.compile(text, weights=blobs, backend="ref")
    feed = dict(inputs)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    if ane_shaped:  # pack every tensor into its block of the one input, unpack the one output
        assert in_names == ["x"] and len(out_names) == 1
        (info,) = k.inputs
        x = np.zeros(info.shape, np_dtype)
        for t, c0, col, rows, cols in in_layout:
            block = w[t].reshape(rows, cols) if is_weight(t) else feed[t][0, :, 0, :]
            assert block.shape == (rows, cols), t
            x[0, c0:c0 + rows, 0, col:col + cols] = block
        y = k(x)
        return {t: from_kernel(y[:, c0:c0 + rows, :, :]) for t, c0, _, rows, _ in out_layout}
    if pipeline == "dynamic":
        feed.update({n: w[n].reshape(1, 1, w[n].shape[0], -1) for n in in_names if is_weight(n)})
    outs = k(**{n: feed[n].astype(np_dtype) for n in in_names})
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {n: (np.asarray(o, np.float64) if n == "probs" else from_kernel(o)) for n, o in zip(out_names, outs)}


def check(got, ref, dtype, what):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else ref
    if dtype == "fp32":
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5 * max(1.0, np.abs(ref).max()), err_msg=what)
    else:
        err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
        assert err < 1e-2, f"{what}: relative error {err:.3g}"


# (probs_tap, ane_shaped) per shape: the split programs with and without the tap, and the
# ANE-shaped ones where seq_len allows (a multiple of 32)
FORMS = {name: [(False, True)] if SHAPES[name]["seq_len"] % 32 == 0 else [(False, False), (True, False)]
         for name in SHAPES}
CASES = [(s, p, d) for s in SHAPES for p in ("static", "dynamic") for d in ("fp32", "fp16")]
ATTENTION_CASES = [c + f for c in CASES for f in FORMS[c[0]]]
FFN_CASES = [c + (ane,) for c in CASES for ane in sorted({f[1] for f in FORMS[c[0]]})]


# probs_tap: attention_forward also returns the probabilities and attention_backward takes them
# instead of recomputing them (the ref backend's default in the trainer).
@pytest.mark.torch
@pytest.mark.parametrize("shape_name,pipeline,dtype,probs_tap,ane_shaped", ATTENTION_CASES)
def test_attention_forward(shape_name, pipeline, dtype, probs_tap, ane_shaped):
    shape = SHAPES[shape_name]
    w = make_weights(shape, 1)
    H, KVH, S, D = shape["n_heads"], shape["n_kv_heads"], shape["seq_len"], shape["dim"]
    xn = torch.tensor(np.random.default_rng(2).standard_normal((S, D)))
    W = {k: torch.tensor(v, dtype=torch.float64) for k, v in w.items()}
    q, k, q_pre, k_pre, _ = q_and_k(xn, W, shape)
    v = xn @ W["wv"].T
    attn = attention_ref(q, k, v, H, KVH)
    o = attn @ W["wo"].T
    got = run_kernel("attention_forward", shape, pipeline, dtype, w, {"xn": to_kernel(xn)}, probs_tap, ane_shaped)
    # with QK-norm the kernel hands the backward the projections (it recomputes norm and RoPE)
    qk = dict(q=q_pre, k=k_pre) if shape.get("qk_norm") else dict(q=q, k=k)
    refs = dict(o=o, v=v, attn=attn, **qk)
    if probs_tap:
        refs["probs"] = probs_ref(q, k, H, KVH).reshape(KVH, H // KVH, S, S)
    assert set(got) == set(refs)
    for name, ref in refs.items():
        check(got[name], ref, dtype, f"attention_forward.{name}")


@pytest.mark.torch
@pytest.mark.parametrize("shape_name,pipeline,dtype,probs_tap,ane_shaped", ATTENTION_CASES)
def test_attention_backward(shape_name, pipeline, dtype, probs_tap, ane_shaped):
    shape = SHAPES[shape_name]
    w = make_weights(shape, 3)
    H, KVH, S, D = shape["n_heads"], shape["n_kv_heads"], shape["seq_len"], shape["dim"]
    rng = np.random.default_rng(4)
    xn = torch.tensor(rng.standard_normal((S, D)), requires_grad=True)
    W = {k: torch.tensor(v, dtype=torch.float64) for k, v in w.items()}
    q, k, q_pre, k_pre, gains = q_and_k(xn, W, shape)
    v = xn @ W["wv"].T
    for t in (q_pre, k_pre, v):
        t.retain_grad()
    o = attention_ref(q, k, v, H, KVH) @ W["wo"].T
    dout = torch.tensor(rng.standard_normal((S, D)))
    o.backward(dout)
    qk = (q_pre, k_pre) if shape.get("qk_norm") else (q, k)
    inputs = {"dout": to_kernel(dout), "q": to_kernel(qk[0]), "k": to_kernel(qk[1]), "v": to_kernel(v)}
    if probs_tap:
        inputs["probs"] = probs_ref(q, k, H, KVH).detach().numpy().reshape(KVH, H // KVH, S, S)
    got = run_kernel("attention_backward", shape, pipeline, dtype, w, inputs, probs_tap, ane_shaped)
    assert set(got) == {"dxn", "dq", "dk", "dv"} | {"d" + g for g in gains}
    check(got["dxn"], xn.grad, dtype, "attention_backward.dxn")
    check(got["dq"], q_pre.grad, dtype, "attention_backward.dq")
    check(got["dk"], k_pre.grad, dtype, "attention_backward.dk")
    check(got["dv"], v.grad, dtype, "attention_backward.dv")
    for g, leaf in gains.items():  # the gains' gradient per position, [S, hd]
        check(got["d" + g], leaf.grad, dtype, f"attention_backward.d{g}")


def test_probs_tap_changes_the_attention_kernels_interfaces_only_as_documented():
    shape = SHAPES["gqa"]
    S, H, KVH = shape["seq_len"], shape["n_heads"], shape["n_kv_heads"]
    for tap in (False, True):
        ftext, _, fin, fout, _, _ = _native.model_kernel("attention_forward", shape, "dynamic", "fp16", "1.3/ios18", None, tap)
        btext, _, bin_, bout, _, _ = _native.model_kernel("attention_backward", shape, "dynamic", "fp16", "1.3/ios18", None, tap)
        assert fout == ["o", "q", "k", "v", "attn"] + (["probs"] if tap else [])
        assert bin_ == ["dout", "q", "k", "v"] + (["probs"] if tap else []) + ["wq", "wk", "wv", "wo"]
        assert bout == ["dxn", "dq", "dk", "dv"]
        # the backward recomputes the softmax only without the tap
        assert ("softmax(" in btext) != tap
        if tap:
            assert f"tensor<fp16, [{KVH}, {H // KVH}, {S}, {S}]> probs" in btext


def test_qk_norm_adds_the_gains_and_their_gradients_to_the_attention_kernels():
    shape = SHAPES["qwen"]
    S, hd = shape["seq_len"], head_dim(shape)
    _, _, fin, fout, _, _ = _native.model_kernel("attention_forward", shape, "dynamic")
    _, _, bin_, bout, _, _ = _native.model_kernel("attention_backward", shape, "dynamic")
    assert fin == ["xn", "wq", "wk", "wv", "wo", "q_norm", "k_norm"] and fout == ["o", "q", "k", "v", "attn"]
    assert bin_ == ["dout", "q", "k", "v", "wq", "wk", "wv", "wo", "q_norm", "k_norm"]
    assert bout == ["dxn", "dq", "dk", "dv", "dq_norm", "dk_norm"]
    text, blobs, *_ = _native.model_kernel("attention_backward", shape, "static", "fp16", "1.3/ios18",
                                           make_weights(shape, 8))
    assert {"@model_path/weights/q_norm.bin", "@model_path/weights/k_norm.bin"} <= set(blobs)
    assert f"tensor<fp16, [1, {hd}, 1, {S}]> dq_norm" in text
    for name in ("ffn_forward", "ffn_backward"):  # the FFN does not change
        assert _native.model_kernel(name, shape, "dynamic")[:4] == \
            _native.model_kernel(name, {k: v for k, v in shape.items() if k != "qk_norm"}, "dynamic")[:4]


@pytest.mark.torch
@pytest.mark.parametrize("ane_shaped", [False, True])
def test_qk_norm_in_fp16_holds_projections_whose_squares_sum_past_fp16(ane_shaped):
    # q and k heads of RMS ~100: their plain sum of squares (16 * 100^2) is beyond fp16's 65504
    shape = SHAPES["qwen_ane"]
    w = make_weights(shape, 9)
    w["wq"], w["wk"] = w["wq"] * 100, w["wk"] * 100
    S, D = shape["seq_len"], shape["dim"]
    xn = torch.tensor(np.random.default_rng(10).standard_normal((S, D)))
    W = {k: torch.tensor(v, dtype=torch.float64) for k, v in w.items()}
    q, k, q_pre, _, _ = q_and_k(xn, W, shape)
    assert float(q_pre.pow(2).mean().sqrt()) > 80
    got = run_kernel("attention_forward", shape, "dynamic", "fp16", w, {"xn": to_kernel(xn)}, ane_shaped=ane_shaped)
    check(got["attn"], attention_ref(q, k, xn @ W["wv"].T, shape["n_heads"], shape["n_kv_heads"]), "fp16", "attn")


@pytest.mark.torch
@pytest.mark.parametrize("shape_name,pipeline,dtype,ane_shaped", FFN_CASES)
def test_ffn_forward_and_backward(shape_name, pipeline, dtype, ane_shaped):
    shape = SHAPES[shape_name]
    w = make_weights(shape, 5)
    S, D = shape["seq_len"], shape["dim"]
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((S, D)), requires_grad=True)
    W = {k: torch.tensor(v, dtype=torch.float64) for k, v in w.items()}
    h1, h3 = x @ W["w1"].T, x @ W["w3"].T
    h1.retain_grad()
    h3.retain_grad()
    gate = torch.nn.functional.silu(h1) * h3
    f = gate @ W["w2"].T
    got = run_kernel("ffn_forward", shape, pipeline, dtype, w, {"x2n": to_kernel(x)}, ane_shaped=ane_shaped)
    for name, ref in dict(f=f, h1=h1, h3=h3, gate=gate).items():
        check(got[name], ref, dtype, f"ffn_forward.{name}")

    df = torch.tensor(rng.standard_normal((S, D)))
    f.backward(df)
    got = run_kernel("ffn_backward", shape, pipeline, dtype, w,
                     {"df": to_kernel(df), "h1": to_kernel(h1), "h3": to_kernel(h3)}, ane_shaped=ane_shaped)
    check(got["dx2n"], x.grad, dtype, "ffn_backward.dx2n")
    check(got["dh1"], h1.grad, dtype, "ffn_backward.dh1")
    check(got["dh3"], h3.grad, dtype, "ffn_backward.dh3")


def test_static_kernels_bake_weights_and_dynamic_take_them_as_inputs():
    shape = SHAPES["gqa"]
    w = make_weights(shape, 7)
    text_s, blobs_s, in_s, *_ = _native.model_kernel("attention_forward", shape, "static", "fp16", "1.3/ios18", w)
    text_d, blobs_d, in_d, *_ = _native.model_kernel("attention_forward", shape, "dynamic")
    assert in_s == ["xn"] and in_d == ["xn", "wq", "wk", "wv", "wo"]
    assert {"@model_path/weights/wq.bin", "@model_path/weights/causal_mask.bin"} <= set(blobs_s)
    assert not any("wq" in p for p in blobs_d)
    # the baked weight is the fp16 rounding of wq, row-major [out, in]
    (wq_blob,) = unpack_weights(blobs_s["@model_path/weights/wq.bin"])
    np.testing.assert_array_equal(wq_blob, w["wq"].astype(np.float16).reshape(-1))
    with pytest.raises(ValueError, match="weights"):
        _native.model_kernel("attention_forward", shape, "static")
    with pytest.raises(ValueError, match="n_kv_heads"):
        _native.model_kernel("attention_forward", dict(shape, n_kv_heads=4), "dynamic")
