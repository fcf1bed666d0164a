"""Text generation with the native KV-cache decoder (anetrain._native.Decoder).

    import anetrain
    for token in anetrain.generate("runs/default", [1, 725, 726], max_tokens=100, temperature=0):
        ...

A model comes from a live ``Model`` (its weights read in place, as training's samples do) or a
path anetrain.modelfile opens: a run directory (its newest checkpoint), a checkpoint, a llama2.c
model ``.bin`` or a Hugging Face directory. From a path only the fp32 weights are loaded and
handed to the decoder as they are: no training model (with its gradients and AdamW moments) is
built. The prompt runs through the decoder once, as one batch; every new token then costs one
position. The next token is drawn in NumPy from the decoder's logits: temperature 0 is greedy (argmax), otherwise softmax(logits / temperature)
restricted to the ``top_k`` most likely tokens and then to the smallest set of most likely
tokens whose probability reaches ``top_p``, drawn with a generator seeded by ``seed``.
"""
import os

import numpy as np

from . import _native, modelfile
from . import tokenizer as tokenizers
from .config import native_model_config
from .errors import UsageError
from .model import Model

BOS, EOS = 1, 2  # llama2.c / sentencepiece conventions
TOKENIZER_NAMES = ("tokenizer.model", "tokenizer.json", "tokenizer.bin")  # looked for beside a llama2.c file, in an HF directory


def decoder(source, context=0):
    """A native Decoder for a Model (its live weights, read in place), a Decoder (itself), or a
    path modelfile.read opens (a run, a checkpoint, a llama2.c .bin, an HF directory; a
    classifier of its own is used). context: positions its cache holds (0: the model's seq_len)."""
    if isinstance(source, _native.Decoder):
        return source
    if isinstance(source, Model):
        return source.decoder(context)
    cfg, weights, _ = modelfile.read(os.fspath(source))
    return decoder_of(cfg, weights, context)


def decoder_of(cfg, weights, context=0):
    """A native Decoder over ``weights`` ({llama2.c name: float32 array}, with or without the
    ``.weight`` suffix) for the model config ``cfg``; the arrays are used in place."""
    return _native.Decoder(native_model_config(cfg), {n.removesuffix(".weight"): w for n, w in weights.items()},
                           context)


def tokenizer_for(info):
    """The tokenizer file that goes with a model modelfile.read opened (its ``info``): the run's
    sentencepiece model, an HF directory's tokenizer.model, or tokenizer.model / tokenizer.bin
    beside a llama2.c file; None when there is none."""
    found = modelfile.run_tokenizer(info)
    if found or info["kind"] not in ("hf", "llama2c"):
        return found
    here = info["path"] if info["kind"] == "hf" else os.path.dirname(os.path.abspath(info["path"]))
    found = [os.path.join(here, n) for n in TOKENIZER_NAMES if os.path.isfile(os.path.join(here, n))]
    return found[0] if found else None


def token_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
    """The next token's probabilities (float64 [vocab], zero outside the support) for
    temperature > 0: softmax(logits / temperature), cut to the top_k largest logits (0: all; ties
    at the k-th value stay), then to the smallest set of most likely tokens whose probability
    reaches top_p (1: all), renormalised."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        mass = np.cumsum(p[order])
        keep = order[:int(np.searchsorted(mass, top_p)) + 1]  # the first prefix whose mass reaches top_p
        kept = np.zeros_like(p)
        kept[keep] = p[keep]
        p = kept / kept.sum()
    return p


def sample_token(logits, temperature, top_k, top_p, rng):
    """The next token: the argmax for temperature 0, else drawn from token_probs with ``rng``."""
    if temperature <= 0:
        return int(np.argmax(logits))
    p = token_probs(logits, temperature, top_k, top_p)
    return int(min(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"), p.size - 1))


def check_sampling(temperature, top_k, top_p, max_tokens):
    """UsageError for a setting generation cannot use."""
    if not (np.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if not (isinstance(top_k, (int, np.integer)) and top_k >= 0):
        raise UsageError(f"top_k must be an integer >= 0 (0: no limit), got {top_k}")
    if not (0.0 < top_p <= 1.0):
        raise UsageError(f"top_p must be in (0, 1] (1: no limit), got {top_p}")
    if not (isinstance(max_tokens, (int, np.integer)) and max_tokens >= 0):
        raise UsageError(f"max_tokens must be an integer >= 0, got {max_tokens}")


def generate(model_or_path, prompt_ids=(BOS,), max_tokens=256, temperature=0.8, top_k=0, top_p=0.9, seed=None,
             stop_at_eos=True, eos_id=EOS):
    """An iterator of up to ``max_tokens`` token ids continuing ``prompt_ids`` (a BOS alone when
    empty), each yielded as soon as it is chosen. Stops early at ``eos_id`` (an id or several: a
    tokenizer.json's samples also end at the next document's start; not yielded) unless
    ``stop_at_eos`` is False, and when the decoder's context (the model's seq_len) is full.
    ``model_or_path``: a Model, a path (see decoder) or a Decoder (reset and reused). Bad settings
    raise UsageError here, before any token."""
    check_sampling(temperature, top_k, top_p, max_tokens)
    dec = decoder(model_or_path)
    prompt = np.asarray(list(prompt_ids) or [BOS], dtype=np.int64)
    vocab = dec.config.vocab_size
    if prompt.min() < 0 or prompt.max() >= vocab:
        raise UsageError(f"prompt token ids must lie in [0, {vocab}); got ids from {prompt.min()} to {prompt.max()}")
    if prompt.size >= dec.context:
        raise UsageError(f"the prompt's {prompt.size} tokens leave no room in the model's context of "
                         f"{dec.context}; shorten the prompt")
    stops = {int(eos_id)} if np.isscalar(eos_id) else {int(i) for i in eos_id}
    return _tokens(dec, prompt, max_tokens, temperature, top_k, top_p, np.random.default_rng(seed),
                   stop_at_eos, stops)


def _tokens(dec, prompt, max_tokens, temperature, top_k, top_p, rng, stop_at_eos, eos_id):
    dec.reset()
    logits = dec.forward(prompt)
    for i in range(max_tokens):
        token = sample_token(logits, temperature, top_k, top_p, rng)
        if stop_at_eos and token in eos_id:
            return
        yield token
        if i + 1 == max_tokens or dec.position == dec.context:
            return
        logits = dec.forward(np.array([token], dtype=np.int32))


def load_tokenizer(path):
    """The tokenizer at ``path`` (anetrain.tokenizer: sentencepiece, tokenizer.json or llama2.c's
    tokenizer.bin); None when ``path`` is empty or missing."""
    if not path or not os.path.isfile(path):
        return None
    return tokenizers.load(path)


class TextStream:
    """The text of generated tokens as it becomes final. ``push(id)`` returns the characters that
    token completes ("" while a character's UTF-8 bytes are still arriving in byte pieces),
    ``flush()`` whatever is left. Each token is decoded after the one before it, so a
    tokenizer's leading-space rule sees it mid-text."""

    def __init__(self, tokenizer, previous=BOS):
        self.tokenizer = tokenizer
        self.before = [previous]  # the token before the pending ones
        self.pending = []

    def push(self, token):
        self.pending.append(int(token))
        text = self.tokenizer.decode(self.before + self.pending)
        if text.endswith("\ufffd"):
            return ""
        return self._emit(text)

    def flush(self):
        return self._emit(self.tokenizer.decode(self.before + self.pending)) if self.pending else ""

    def _emit(self, text):
        new = text[len(self.tokenizer.decode(self.before)):]
        self.before, self.pending = self.pending[-1:], []
        return new
