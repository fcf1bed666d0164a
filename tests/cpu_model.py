"""llama2.c's model for one sequence composed from anetrain's CPU ops, as the native trainer will
compose them: CPU ops for embedding, RMSNorm, RoPE, GQA, SwiGLU, classifier and loss; NumPy for
the linears and for causal attention (which the trainer runs as kernels). A test helper, checked
against anetrain/torch_reference.py by the tests that use it.
"""
import numpy as np

from anetrain import _native as nat


def attention_fwd(q, k, v, n_heads):
    """Causal softmax attention per head on [n_heads*hd, S] (k, v already tiled to Q heads)."""
    C, S = q.shape
    hd = C // n_heads
    Q, K, V = (t.astype(np.float64).reshape(n_heads, hd, S).transpose(0, 2, 1) for t in (q, k, v))
    scores = Q @ K.transpose(0, 2, 1) / np.sqrt(hd) + np.triu(np.full((S, S), -np.inf), 1)
    P = np.exp(scores - scores.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    out = (P @ V).transpose(0, 2, 1).reshape(C, S).astype(np.float32)
    return out, P


def attention_bwd(dout, q, k, v, P, n_heads):
    C, S = q.shape
    hd = C // n_heads
    Q, K, V = (t.astype(np.float64).reshape(n_heads, hd, S).transpose(0, 2, 1) for t in (q, k, v))
    dO = dout.astype(np.float64).reshape(n_heads, hd, S).transpose(0, 2, 1)
    dV = P.transpose(0, 2, 1) @ dO
    dP = dO @ V.transpose(0, 2, 1)
    dS = P * (dP - (P * dP).sum(-1, keepdims=True)) / np.sqrt(hd)
    dQ, dK = dS @ K, dS.transpose(0, 2, 1) @ Q
    return [t.transpose(0, 2, 1).reshape(C, S).astype(np.float32) for t in (dQ, dK, dV)]


def cpu_model_step(cfg, W, tokens):
    """Loss and gradients {name: grad} of llama2.c's model for one sequence tokens [S+1]."""
    inp, tgt = tokens[:-1], tokens[1:]
    H, KV, eps, theta = cfg.n_heads, cfg.n_kv_heads, cfg.norm_eps, cfg.rope_theta
    saved = []
    x = nat.cpu_embedding_fwd(W["tok_embeddings"], inp)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        xn, r1 = nat.cpu_rmsnorm_fwd(x, W[p + "attention_norm"], eps)
        q = nat.cpu_rope_fwd(W[p + "attention.wq"] @ xn, H, theta)
        k = nat.cpu_rope_fwd(W[p + "attention.wk"] @ xn, KV, theta)
        v = W[p + "attention.wv"] @ xn
        kt, vt = nat.cpu_gqa_tile(k, H, KV), nat.cpu_gqa_tile(v, H, KV)
        att, P = attention_fwd(q, kt, vt, H)
        x2 = x + W[p + "attention.wo"] @ att
        xn2, r2 = nat.cpu_rmsnorm_fwd(x2, W[p + "ffn_norm"], eps)
        h1, h3 = W[p + "feed_forward.w1"] @ xn2, W[p + "feed_forward.w3"] @ xn2
        gate = nat.cpu_swiglu_fwd(h1, h3)
        saved.append((x, xn, r1, q, kt, vt, att, P, x2, xn2, r2, h1, h3, gate))
        x = x2 + W[p + "feed_forward.w2"] @ gate
    xf, rf = nat.cpu_rmsnorm_fwd(x, W["norm"], eps)
    logits = nat.cpu_classifier_fwd(W["tok_embeddings"], xf)
    loss, dlogits = nat.cpu_cross_entropy(logits, tgt)

    G = {name: np.zeros_like(w) for name, w in W.items()}
    dxf = nat.cpu_classifier_bwd(W["tok_embeddings"], xf, dlogits, G["tok_embeddings"])
    dx = np.zeros_like(x)
    nat.cpu_rmsnorm_bwd(dxf, x, W["norm"], rf, dx, G["norm"])
    for i in reversed(range(cfg.n_layers)):
        p = f"layers.{i}."
        x, xn, r1, q, kt, vt, att, P, x2, xn2, r2, h1, h3, gate = saved[i]
        G[p + "feed_forward.w2"] += dx @ gate.T
        dh1, dh3 = nat.cpu_swiglu_bwd(W[p + "feed_forward.w2"].T @ dx, h1, h3)
        G[p + "feed_forward.w1"] += dh1 @ xn2.T
        G[p + "feed_forward.w3"] += dh3 @ xn2.T
        dxn2 = W[p + "feed_forward.w1"].T @ dh1 + W[p + "feed_forward.w3"].T @ dh3
        dx2 = dx.copy()  # residual path; the norm's gradient accumulates onto it
        nat.cpu_rmsnorm_bwd(np.ascontiguousarray(dxn2), x2, W[p + "ffn_norm"], r2, dx2, G[p + "ffn_norm"])
        G[p + "attention.wo"] += dx2 @ att.T
        dq, dkt, dvt = attention_bwd(W[p + "attention.wo"].T @ dx2, q, kt, vt, P, H)
        dq = nat.cpu_rope_bwd(dq, H, theta)
        dk = nat.cpu_rope_bwd(nat.cpu_gqa_reduce(dkt, H, KV), KV, theta)
        dv = nat.cpu_gqa_reduce(dvt, H, KV)
        G[p + "attention.wq"] += dq @ xn.T
        G[p + "attention.wk"] += dk @ xn.T
        G[p + "attention.wv"] += dv @ xn.T
        dxn = W[p + "attention.wq"].T @ dq + W[p + "attention.wk"].T @ dk + W[p + "attention.wv"].T @ dv
        dx = dx2.copy()
        nat.cpu_rmsnorm_bwd(np.ascontiguousarray(dxn), x, W[p + "attention_norm"], r1, dx, G[p + "attention_norm"])
    nat.cpu_embedding_bwd(dx, inp, G["tok_embeddings"])
    return loss, G
