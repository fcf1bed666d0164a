"""The model and its training step, from Python.

    from anetrain.model import Model
    m = Model(dict(dim=288, n_layers=6, n_heads=6, vocab_size=32000, seq_len=256), seed=1)
    loss, timings = m.step(tokens, lr=3e-4)      # tokens: int32 [batch, seq_len + 1]
    logits = m.forward(tokens[:, :-1])           # [batch, seq_len, vocab]
    wq = m.get("layers.0.attention.wq")          # llama2.c names; also "...wq.weight"

Every layer runs through the generated MIL kernels on a backend (the ANE on a Mac, the ref
backend elsewhere); embedding, norms, classifier, loss and AdamW run natively on the CPU.
"""
import numpy as np

from . import _native
from . import ane, backends
from .config import adamw_problem, ane_shaped_from_env, native_model_config

KINDS = ("weight", "grad", "m", "v")


def _name(name):
    """llama2.c's model.py names end in .weight; the native state uses the bare name."""
    return name[:-len(".weight")] if name.endswith(".weight") else name


class Model:
    """llama2.c's Transformer with its weights, gradients and AdamW state, trained natively."""

    def __init__(self, config, backend="auto", pipeline="dynamic", precision="fp16", seed=None, loss_scale=256.0,
                 compile_budget=None, dialect=None, ane_shaped=None):
        """ane_shaped: run the ANE-shaped programs (one packed input, one output; what the ANE
        runs) rather than the split ones. None: ANETRAIN_ANE_SHAPED=0/1, else on exactly when the
        backend is the ANE."""
        self.config = native_model_config(config)
        dialect = dialect or ane.dialect_string()  # this Mac's MIL dialect (1.3/ios18 off macOS)
        if isinstance(backend, str):
            backend = backends.new_backend(backend, compile_budget=compile_budget, precision=precision)
        self.backend = backend
        if ane_shaped is None:
            ane_shaped = ane_shaped_from_env()
        self._t = _native.Trainer(self.config, getattr(backend, "native", backend), pipeline=pipeline,
                                  precision=precision, dialect=dialect, loss_scale=loss_scale,
                                  ane_shaped=-1 if ane_shaped is None else int(bool(ane_shaped)))
        if seed is not None:
            self._t.state.init_random(int(seed))

    # -- training
    def token_ids(self, tokens):
        """``tokens`` as int32 after checking every id lies in [0, vocab_size): a plain cast would
        wrap int64 ids >= 2**31 (or floats) into valid-looking ones and train on the wrong tokens."""
        a = np.asarray(tokens)
        if a.size and not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"token ids must be integers, got an array of {a.dtype}")
        vocab = self.config.vocab_size
        if a.size and (a.min() < 0 or a.max() >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}) for this model's vocabulary; got ids from "
                             f"{a.min()} to {a.max()}")
        return a.astype(np.int32)

    def accumulate(self, tokens, grads_ready=None):
        """Forward and backward over int32 tokens [batch, seq_len+1]; adds gradients; returns the mean loss.

        grads_ready(offset, count), if given, is called during the last sequence's backward pass
        for each range of ``flat("grad")`` that then holds its final sum (norm, the layers from the
        last, tok_embeddings), possibly from another thread: a data-parallel run reduces it
        meanwhile. Give it with the last accumulate() before update()."""
        return self._t.accumulate(self.token_ids(tokens), grads_ready)

    @property
    def grads_ready_ranges(self):
        """[(offset, count)] of ``flat("grad")`` in the order accumulate() hands them to grads_ready."""
        return [tuple(r) for r in self._t.grads_ready_ranges]

    def update(self, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, clip=1.0, sequences=None):
        """Clip (global norm; clip 0 disables) and apply AdamW; returns the gradient norm before clipping.
        ``sequences``: how many sequences the gradients sum over when not those accumulated here
        (data parallel: all ranks' after an all-reduce of the sums).
        ValueError for a setting that would turn the weights into NaN or silently skip clipping."""
        bad = adamw_problem(lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=weight_decay, grad_clip=clip,
                            eps=eps)
        if bad:
            name, rule, value = bad
            name = {"beta1": "betas[0]", "beta2": "betas[1]", "grad_clip": "clip"}.get(name, name)
            raise ValueError(f"{name} must be {rule}, got {value}")
        return self._t.update(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, clip=clip,
                              sequences=sequences or 0)

    def step(self, tokens, lr, **update_args):
        """One optimizer step on one batch: returns (loss, timings of this step in ms)."""
        self._t.reset_timings()
        loss = self.accumulate(tokens)
        norm = self.update(lr, **update_args)
        timings = self._t.timings()
        timings["grad_norm"] = norm
        return loss, timings

    def forward(self, tokens):
        """Logits [batch, seq_len, vocab] for int32 tokens [batch, seq_len]."""
        return self._t.forward(self.token_ids(tokens))

    @property
    def timings(self):
        """Milliseconds per part (kernels, cpu_ops, dw, dw_wait, optimizer, compile, total) since the last reset."""
        return self._t.timings()

    def reset_timings(self):
        self._t.reset_timings()

    def prepare(self):
        """Compile the kernels the next step needs now, so a kernel that cannot run where asked
        fails here (BackendError) rather than mid-run."""
        self._t.prepare()

    def placements(self):
        """[(kernel, backend, reason)] for the compiled kernels: where each runs, and why not where
        asked ('' when it runs there)."""
        return [tuple(p) for p in self._t.placements()]

    @property
    def ane_shaped(self):
        """Whether the kernels are the ANE-shaped programs."""
        return self._t.ane_shaped

    def close(self):
        """Free the compiled kernels (on the ANE: unload them and remove their model directories).
        The model stays usable; the next step compiles again."""
        self._t.release_kernels()

    def compiles_needed(self):
        """Compiles the next accumulate() needs (static pipeline: every layer after an update)."""
        return self._t.compiles_needed()

    def compiles_after_update(self):
        """Compiles a forward pass right after the next update needs (static pipeline: every layer)."""
        return self._t.compiles_after_update()

    @property
    def step_count(self):
        """AdamW updates applied so far."""
        return self._t.state.step

    @step_count.setter
    def step_count(self, value):
        self._t.state.step = int(value)

    @property
    def pipeline(self):
        return self._t.pipeline

    @property
    def precision(self):
        return self._t.precision

    # -- tensors by llama2.c name
    def names(self):
        return list(self._t.state.names())

    def get(self, name, kind="weight"):
        """A copy of one tensor: kind is weight, grad, m or v (AdamW moments)."""
        return self._t.state.get(_name(name), kind)

    def set(self, name, value, kind="weight"):
        self._t.state.set(_name(name), np.ascontiguousarray(value, dtype=np.float32), kind)

    def flat(self, kind="grad"):
        """A writable 1-D float32 view (no copy) of one whole buffer (kind: weight, grad, m or v),
        the tensors in names() order. After a weight view the static pipeline recompiles before
        every step, since changes made through it cannot be seen."""
        return self._t.state.flat(kind)

    def state_dict(self, kinds=KINDS):
        """{"<kind>:<name>": array} for the given kinds (default: weights, grads and both moments)."""
        return {f"{k}:{n}": self.get(n, k) for k in kinds for n in self.names()}

    def load_state_dict(self, arrays):
        for key, value in arrays.items():
            kind, _, name = key.partition(":")
            if kind not in KINDS or not name:
                raise KeyError(f"state key {key!r} is not '<kind>:<name>' with kind in {KINDS}")
            self.set(name, value, kind)

    def weights(self):
        """{llama2.c name: weight array}."""
        return {n: self.get(n) for n in self.names()}

    def decoder(self, context=0):
        """A KV-cache decoder for generation (anetrain._native.Decoder, fp32 on the CPU) that reads
        this model's weights in place, as they are when it runs. context: positions its cache
        holds (0: seq_len)."""
        return _native.Decoder(self._t.state, context)
