"""A small PyTorch implementation of llama2.c's Transformer: the reference for every model test.

It follows llama2.c's model.py: RMSNorm (eps inside the root), RoPE rotating ADJACENT channel
pairs (2i, 2i+1) of each head, grouped-query attention where Q head h reads KV head
h // (n_heads / n_kv_heads) (repeat-interleave), causal softmax attention, the SwiGLU feed-forward
w2(silu(w1 x) * w3 x), pre-norm residual blocks without scaling, no biases, and a classifier tied
to the token embedding. Weights are passed by llama2.c name without the ".weight" suffix
(tok_embeddings, layers.{i}.attention.wq, ..., norm).

The Qwen3 family's additions, as transformers' Qwen3 computes them: heads of an explicit head_dim
(wq [n_heads * head_dim, dim], wo [dim, n_heads * head_dim]); with qk_norm an RMSNorm over
head_dim of every query and key head, with gains layers.{i}.attention.q_norm / k_norm [head_dim],
before RoPE; and, untied, a classifier of its own ("output" [vocab, dim]).

`cfg` is any object with dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, norm_eps,
rope_theta, head_dim, qk_norm and tie_embeddings attributes (anetrain._native.ModelConfig has
them; head_dim resolved).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def precompute_rope(head_dim, seq_len, theta, dtype=torch.float32):
    """cos, sin [seq_len, head_dim // 2] of the angles pos * theta^(-2i / head_dim), computed in float64."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), freqs)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def apply_rotary_emb(x, cos, sin):
    """Rotate adjacent pairs of x [B, S, heads, head_dim] by the per-position angles."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2)


def repeat_kv(x, n_rep):
    """[B, S, n_kv_heads, hd] -> [B, S, n_kv_heads * n_rep, hd], each KV head repeated n_rep times in a row."""
    if n_rep == 1:
        return x
    b, s, n_kv, hd = x.shape
    return x[:, :, :, None, :].expand(b, s, n_kv, n_rep, hd).reshape(b, s, n_kv * n_rep, hd)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.wq = nn.Linear(cfg.dim, q_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, kv_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, kv_dim, bias=False)
        self.wo = nn.Linear(q_dim, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, hd]
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        causal = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(causal, float("-inf"))
        out = F.softmax(scores, dim=-1) @ v
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin):
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, tokens):
        """tokens [B, S+1] -> (logits [B, S, vocab], mean cross-entropy of predicting tokens[:, 1:])."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        s = inputs.shape[1]
        cos, sin = precompute_rope(self.cfg.head_dim, s, self.cfg.rope_theta, self.norm.weight.dtype)
        h = self.tok_embeddings(inputs)
        for layer in self.layers:
            h = layer(h, cos, sin)
        logits = self.output(self.norm(h))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def weights(self):
        """{llama2.c name: parameter}, a tied classifier counted once as tok_embeddings."""
        return {name.removesuffix(".weight"): p for name, p in self.named_parameters()}


def build(cfg, weights, dtype=torch.float32):
    """A Transformer holding copies of `weights` ({llama2.c name: array}), every tensor named."""
    model = Transformer(cfg).to(dtype)
    params = model.weights()
    missing = set(params) - set(weights)
    extra = set(weights) - set(params)
    if missing or extra:
        raise KeyError(f"weights do not match the model: missing {sorted(missing)}, unexpected {sorted(extra)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(weights[name])).reshape(p.shape))
    return model


def adamw(model, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """torch AdamW with our groups: decay for matrices and the embedding, none for RMSNorm gains."""
    params = model.weights()
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
