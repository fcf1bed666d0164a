"""Text generation from a Model: temperature and top-k sampling over a sliding window.

The kernels are compiled for a fixed sequence length, so each new token runs one full-window
forward (a causal model's logits at position p do not depend on what is to its right, so a
short prompt is simply padded). That costs a forward per token: fine for progress samples.
"""
import numpy as np

BOS, EOS = 1, 2  # llama2.c / sentencepiece conventions


def sample_tokens(model, prompt=(BOS,), n_tokens=100, temperature=0.8, top_k=50, seed=0, stop=(EOS,)):
    """Token ids continuing ``prompt``; stops early at any id in ``stop`` (none when empty)."""
    seq = model.config.seq_len
    ids = [int(t) for t in prompt] or [BOS]
    rng = np.random.default_rng(seed)
    window = np.zeros((1, seq), dtype=np.int32)
    out = []
    for _ in range(n_tokens):
        ctx = ids[-seq:]
        window[0, :len(ctx)] = ctx
        window[0, len(ctx):] = 0
        logits = model.forward(window)[0, len(ctx) - 1].astype(np.float64)
        nxt = _pick(logits, temperature, top_k, rng)
        if nxt in stop:
            break
        ids.append(nxt)
        out.append(nxt)
    return out


def _pick(logits, temperature, top_k, rng):
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k and top_k < logits.size:
        cut = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < cut, -np.inf, logits)
    p = np.exp(logits - logits.max())
    return int(rng.choice(logits.size, p=p / p.sum()))


def validation_loss(model, windows, chunk=4):
    """Mean cross-entropy of ``model`` on int32 windows [n, seq_len + 1] (no gradients)."""
    if len(windows) == 0:
        return float("nan")
    total, count = 0.0, 0
    for i in range(0, len(windows), chunk):
        w = windows[i:i + chunk]
        logits = model.forward(w[:, :-1]).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        tgt = w[:, 1:]
        total += -np.take_along_axis(logp, tgt[..., None], axis=-1).sum()
        count += tgt.size
    return total / count
