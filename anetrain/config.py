"""Model presets, training settings, the command line and config files, and the learning-rate schedule.

Every setting comes, in increasing priority, from: the dataclass default, the model preset, the
config file (``--config FILE``, TOML or JSON), and the command line. A config file holds training
settings at the top level (the same names as the flags, with ``_`` for ``-``) and model fields in
a ``[model]`` table::

    preset = "stories15M"
    steps = 2000
    lr = 5e-4
    [model]
    seq_len = 128

The training loop that composes these settings with the data, checkpoint and telemetry modules is
``anetrain.trainer``.
"""
import argparse
import dataclasses
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field

from . import _native, tokenizer
from .errors import UsageError

PIPELINES = ("static", "dynamic")
# The fields the native model config (anetrain._native.ModelConfig) takes.
NATIVE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "seq_len", "norm_eps",
                 "rope_theta", "head_dim", "qk_norm", "tie_embeddings")
INT32_MAX = 2 ** 31 - 1
BACKENDS = ("auto", "ref", "ane")
ALLREDUCE = ("after", "overlap")
REPO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


@dataclass
class ModelConfig:
    """A Llama-2-style transformer's shape, or a Qwen3's. ``hidden_dim`` 0 means llama2.c's rule;
    ``n_kv_heads`` 0 means equal to ``n_heads`` (multi-head attention); ``head_dim`` 0 means
    ``dim // n_heads`` (llama2.c; Qwen3 gives it, so q_dim = n_heads * head_dim may differ from
    dim). ``qk_norm``: each query and key head is RMS-normalised with its own gains before RoPE
    (Qwen3). ``tie_embeddings``: the classifier is the token embedding (llama2.c, Qwen3-0.6B), else
    a separate ``output`` matrix."""
    name: str = "custom"
    dim: int = 288
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 0
    vocab_size: int = 32000
    seq_len: int = 256
    hidden_dim: int = 0
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    head_dim: int = 0
    qk_norm: bool = False
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim == 0:  # llama2.c's rule, defined once in the native config
            self._check_c_ints(("dim", "multiple_of"))
            try:
                self.hidden_dim = _native.ModelConfig.default_hidden_dim(self.dim, self.multiple_of)
            except ValueError as e:
                raise UsageError(f"model {e}") from None
        self.head_dim = self.validate().head_dim  # resolved by the native rule

    def _check_c_ints(self, fields):
        for f in fields:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool):
                raise UsageError(f"model {f} must be an integer, got {v!r}")
            if not -INT32_MAX <= v <= INT32_MAX:  # the native config holds C ints
                raise UsageError(f"model {f} must be at most {INT32_MAX}, got {v}")

    def validate(self):
        """The native config of these fields; UsageError for any shape it refuses. The rules live
        there once (native/train/config.cpp and the shape rules it shares with the kernel
        generators in native/mil/kernels.cpp); here only what must hold to hand the fields over
        (C ints, numbers, booleans)."""
        self._check_c_ints([f for f in NATIVE_FIELDS if _FIELD_TYPES[f] is int])
        for f in NATIVE_FIELDS:
            v, kind = getattr(self, f), _FIELD_TYPES[f]
            if kind is bool and not isinstance(v, bool):
                raise UsageError(f"model {f} must be true or false, got {v!r}")
            if kind is float and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise UsageError(f"model {f} must be a number, got {v!r}")
        try:
            return _native.ModelConfig(**self.native_kwargs())
        except ValueError as e:
            raise UsageError("model " + str(e).removeprefix("ModelConfig: ")) from None

    def training_bytes(self):
        """A lower bound on the memory the native trainer holds for this model (the sum of
        training_memory's parts)."""
        return sum(self.training_memory().values())

    def training_memory(self, rounded_weights=False):
        """The native trainer's memory by part, in bytes (a lower bound): ``state`` the fp32
        weights, gradients and both AdamW moments (16 bytes per parameter); ``activations`` each
        layer's activations and attention probabilities for one sequence; ``logits`` one
        sequence's logits and the final norm's buffers. ``rounded_weights``: also the fp16-rounded
        copy of the layers' weights (4 bytes per layer parameter) that the trainer keeps for the
        ref backend's split fp16 programs on the dynamic pipeline (the default there)."""
        s, d, h = self.seq_len, self.dim, self.hidden_dim
        gains = 2 * self.head_dim if self.qk_norm else 0  # the QK-norm gains' gradients per position
        per_layer = s * (10 * d + 3 * self.q_dim + 4 * self.kv_dim + 5 * h + 2 + gains) + self.n_heads * s * s
        parts = {"state": 16 * self.n_params(), "activations": 4 * self.n_layers * per_layer,
                 "logits": 4 * s * (4 * d + 1 + self.vocab_size)}
        if rounded_weights:
            per_layer_params = sum(math.prod(shape) for shape in layer_param_shapes(self).values())
            parts["rounded_weights"] = 4 * self.n_layers * per_layer_params
        return parts

    @property
    def q_dim(self):
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self):
        return self.n_kv_heads * self.head_dim

    def n_params(self):
        """Parameter count (a tied embedding counted once), as the native config counts it."""
        return self.validate().param_count

    def to_dict(self):
        return dataclasses.asdict(self)

    def native_kwargs(self):
        """Keyword arguments of the native ``anetrain._native.ModelConfig`` constructor."""
        return {k: getattr(self, k) for k in NATIVE_FIELDS}


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
MODEL_FIELDS = tuple(_FIELD_TYPES)

PRESETS = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, vocab_size=1024, seq_len=128),
    "stories15M": dict(dim=288, n_layers=6, n_heads=6, vocab_size=32000, seq_len=256),
    "stories42M": dict(dim=512, n_layers=8, n_heads=8, vocab_size=32000, seq_len=256),
    "stories110M": dict(dim=768, n_layers=12, n_heads=12, vocab_size=32000, seq_len=256),
    # Qwen/Qwen3-0.6B's config.json: hidden 1024, intermediate 3072, 28 layers, 16/8 heads of 128,
    # vocab 151936, rms_norm_eps 1e-6, rope_theta 1e6, tie_word_embeddings
    "qwen3-0.6B": dict(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128, vocab_size=151936,
                       seq_len=256, hidden_dim=3072, qk_norm=True, norm_eps=1e-6, rope_theta=1e6),
}
PRESET_NOTES = {
    "tiny": "trains in minutes on 2 CPU cores on the shipped data/ corpus (vocab 1024)",
    "stories15M": "llama2.c Stories15M",
    "stories42M": "llama2.c Stories42M (seq 1024 there; 256 here for training)",
    "stories110M": "llama2.c Stories110M",
    "qwen3-0.6B": "Qwen3-0.6B as released (head_dim 128: q_dim 2048 != dim 1024; QK-norm; rope_theta 1e6; "
                  "tied embeddings; 596,049,920 params)",
}


def model_config_of(config):
    """A ModelConfig from a preset name, a ModelConfig, or a dict of its fields."""
    if isinstance(config, str):
        return model_preset(config)
    if isinstance(config, dict):
        return ModelConfig(**config)
    return config


def native_model_config(config):
    """The native ModelConfig (what anetrain._native.Trainer takes) from a ModelConfig, a dict, or
    any object with llama2.c's field names."""
    if isinstance(config, _native.ModelConfig):
        return config
    if not isinstance(config, dict):
        config = {f: getattr(config, f) for f in NATIVE_FIELDS if hasattr(config, f)}
    unknown = set(config) - set(NATIVE_FIELDS)
    if unknown:
        raise ValueError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
    return _native.ModelConfig(**{k: v for k, v in config.items() if v is not None})


def kernel_shape(config):
    """The shape dict the kernel generators (anetrain._native.model_kernel) take, from any config
    native_model_config accepts."""
    c = native_model_config(config)
    return dict(dim=c.dim, hidden_dim=c.hidden_dim, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, seq_len=c.seq_len,
                head_dim=c.head_dim, rope_theta=c.rope_theta, qk_norm=c.qk_norm, norm_eps=c.norm_eps)


def layer_param_shapes(config):
    """{short name: shape} of one layer's tensors ("wq", ..., "w3", "attention_norm", "ffn_norm", and
    with QK-norm "q_norm", "k_norm"), from the native parameter list; the short names are the ones
    the kernels take their weights by."""
    prefix = "layers.0."
    return {name[len(prefix):].split(".")[-1]: tuple(shape)
            for name, shape, _ in native_model_config(config).param_specs() if name.startswith(prefix)}


def model_preset(name):
    """The ModelConfig of a preset name; UsageError listing the presets when unknown."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelConfig(name=name, **PRESETS[name])


@dataclass
class TrainConfig:
    """Everything about a run except the model's shape. ``help`` metadata feeds ``--help``."""
    preset: str = field(default="tiny", metadata={"help": "model preset: " + ", ".join(PRESETS)})
    data: str = field(default="", metadata={
        "help": "glob of training token shards (default: the shipped data/train_*.bin)"})
    val_data: str = field(default="", metadata={
        "help": "glob of validation shards (default: data/val_*.bin with the shipped data, else "
                "the last --val-fraction of each training shard)"})
    val_fraction: float = field(default=0.05, metadata={
        "help": "share of each training shard held out for validation when --val-data is not given"})
    tokenizer: str = field(default="", metadata={
        "help": "sentencepiece tokenizer.model, llama2.c tokenizer.bin or Hugging Face tokenizer.json for samples (default: "
                "data/tokenizer.model with the shipped data, else the --init-from model directory's)"})
    out: str = field(default="runs/default", metadata={"help": "run directory: checkpoints, metrics.jsonl"})
    steps: int = field(default=600, metadata={"help": "optimizer steps to train in total"})
    batch_size: int = field(default=8, metadata={"help": "sequences per micro-batch"})
    accum_steps: int = field(default=1, metadata={
        "help": "micro-batches whose gradients are accumulated per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "help": "learning-rate floor at the end of the cosine decay, as a fraction of --lr"})
    warmup_steps: int = field(default=50, metadata={"help": "steps of linear warmup from 0 to --lr"})
    weight_decay: float = field(default=0.1, metadata={
        "help": "AdamW decoupled weight decay (matrices and embedding; never norm gains)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "global gradient-norm clip (0 disables)"})
    loss_scale: float = field(default=256.0, metadata={
        "help": "factor on dlogits that keeps fp16 backward values above underflow; undone before "
                "clipping and the update"})
    pipeline: str = field(default="dynamic", metadata={
        "help": "static: weights baked into kernels, recompiled per batch; dynamic: weights passed "
                "as inputs, kernels compiled once"})
    backend: str = field(default="auto", metadata={
        "help": "where kernels run: auto (ane if available, else ref), ref (CPU), ane (Apple Neural Engine)"})
    ane_shaped: bool = field(default=False, metadata={
        "help": "run the ANE-shaped programs (one packed fp16 input, one output: exactly what the ANE "
                "runs) on any backend; on the ANE they always are (ANETRAIN_ANE_SHAPED=1 does the same)"})
    compile_budget: int = field(default=0, metadata={
        "help": "kernel compiles allowed per process before checkpoint + restart (0: the backend's own limit)"})
    seed: int = field(default=1337, metadata={"help": "seed of weight init and data sampling"})
    eval_interval: int = field(default=100, metadata={"help": "steps between validation losses (0: never)"})
    eval_windows: int = field(default=32, metadata={"help": "validation windows per evaluation"})
    sample_interval: int = field(default=200, metadata={"help": "steps between text samples (0: never)"})
    sample_tokens: int = field(default=100, metadata={"help": "tokens per text sample"})
    ckpt_interval: int = field(default=200, metadata={
        "help": "steps between checkpoints (a checkpoint is always written at the end)"})
    keep_last: int = field(default=3, metadata={"help": "checkpoints kept in the run directory"})
    resume: bool = field(default=False, metadata={
        "help": "carry on from the newest checkpoint in --out (or --ckpt)"})
    ckpt: str = field(default="", metadata={"help": "checkpoint to resume from (implies --resume)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start a fresh run in an --out that holds another run, moving that run's checkpoints "
                "and metrics.jsonl into <out>/archive-<timestamp>/ first (ignored with --resume)"})
    init_from: str = field(default="", metadata={
        "help": "start from this model's weights instead of random ones: a llama2.c .bin (version 0 or 1), a "
                "Hugging Face model directory, or a run directory or checkpoint; the model's shape comes from it"})
    log_stderr: bool = field(default=False, metadata={
        "help": "also print each step's telemetry line to stderr (it always goes to <out>/metrics.jsonl)"})
    no_report: bool = field(default=False, metadata={
        "help": "do not draw <out>/report.png at the end of the run (drawing it takes matplotlib a second or two)"})
    wandb: str = field(default="", metadata={
        "help": "also log the metrics to this Weights & Biases project (needs: pip install wandb)"})
    # data parallel (under torchrun; docs/distributed.md)
    allreduce: str = field(default="after", metadata={
        "help": "data parallel: all-reduce the gradients once after the backward pass (after), or per layer "
                "while it goes on with earlier layers (overlap)"})
    sync_check: int = field(default=100, metadata={
        "help": "data parallel: steps between comparisons of a weight checksum across ranks, which stop the "
                "run when the ranks drift apart (0: never)"})
    dist_timeout: float = field(default=300.0, metadata={
        "help": "data parallel: seconds a rank waits for the others (to start, or in any exchange) before it "
                "ends the run; must exceed rank 0's longest pause (validation, samples, checkpoints)"})
    reshard: bool = field(default=False, metadata={
        "help": "with --resume: accept a checkpoint written by another number of ranks (each rank then draws "
                "new windows; see docs/distributed.md)"})

    def validate(self):
        if self.pipeline not in PIPELINES:
            raise UsageError(f"unknown pipeline {self.pipeline!r}; choose static or dynamic")
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        for f in ("steps", "batch_size", "accum_steps", "keep_last", "eval_windows"):
            if getattr(self, f) < 1:
                raise UsageError(f"--{f.replace('_', '-')} must be at least 1, got {getattr(self, f)}")
        for f in ("warmup_steps", "eval_interval", "sample_interval", "sample_tokens",
                  "ckpt_interval", "compile_budget", "sync_check"):
            if getattr(self, f) < 0:
                raise UsageError(f"--{f.replace('_', '-')} must not be negative, got {getattr(self, f)}")
        if self.allreduce not in ALLREDUCE:
            raise UsageError(f"unknown --allreduce {self.allreduce!r}; choose {' or '.join(ALLREDUCE)}")
        if not (math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            raise UsageError(f"--dist-timeout must be a finite number of seconds > 0, got {self.dist_timeout}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a finite number > 0, got {self.lr}")
        bad = adamw_problem(lr=self.lr, beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay,
                            grad_clip=self.grad_clip)
        if bad:
            name, rule, value = bad
            raise UsageError(f"--{name.replace('_', '-')} must be {rule}, got {value}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"--min-lr-ratio must be between 0 and 1, got {self.min_lr_ratio}")
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise UsageError(f"--loss-scale must be a finite number > 0, got {self.loss_scale}")
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise UsageError(f"--wandb {self.wandb} needs the wandb package, which is not installed; "
                             f"pip install wandb (and wandb login), or drop --wandb")
        # Paths given explicitly must exist now: a missing tokenizer would silently turn samples
        # off, and a missing --init-from would fail only after the run directory was made.
        if self.tokenizer and not os.path.isfile(self.tokenizer):
            what = "is a directory" if os.path.isdir(self.tokenizer) else "does not exist"
            raise UsageError(f"--tokenizer {self.tokenizer} {what}; give the path of a file")
        if self.init_from and not os.path.exists(self.init_from):
            raise UsageError(f"--init-from {self.init_from} does not exist; give a llama2.c .bin, a Hugging Face "
                             f"model directory, or a run directory or checkpoint")

    def to_dict(self):
        return dataclasses.asdict(self)


def adamw_problem(lr, beta1, beta2, weight_decay, grad_clip, eps=1e-8):
    """The first AdamW setting that cannot train, as (name, what it must be, value), else None.

    Checked before the first step because a bad value otherwise shows up only as a NaN loss (with
    advice about --lr) or, for a NaN clip, as clipping silently turned off."""
    def finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x)

    rules = (("lr", lr, finite(lr) and lr >= 0, "a finite number >= 0"),  # the schedule's floor may be 0
             ("beta1", beta1, finite(beta1) and 0 <= beta1 < 1, "in [0, 1)"),
             ("beta2", beta2, finite(beta2) and 0 <= beta2 < 1, "in [0, 1)"),
             ("weight_decay", weight_decay, finite(weight_decay) and weight_decay >= 0, "a finite number >= 0"),
             ("grad_clip", grad_clip, finite(grad_clip) and grad_clip >= 0, "a finite number >= 0 (0 disables)"),
             ("eps", eps, finite(eps) and eps > 0, "a finite number > 0"))
    for name, value, ok, rule in rules:
        if not ok:
            return name, rule, value
    return None


# The model fields the command line and a config file's [model] table may set; each flag's type
# is its ModelConfig field's (booleans as --x / --no-x).
MODEL_FLAGS = {
    "dim": "model width",
    "n_layers": "transformer blocks",
    "n_heads": "query heads",
    "n_kv_heads": "key/value heads (GQA when fewer than n_heads)",
    "head_dim": "width of each head (0: dim / n_heads, llama2.c's rule); q_dim = n_heads * head_dim",
    "vocab_size": "vocabulary size (must cover the data's token ids)",
    "seq_len": "tokens per training sequence",
    "hidden_dim": "FFN width (0: llama2.c rule, int(2*4*dim/3) rounded up to 32)",
    "rope_theta": "RoPE base (llama2.c 10000, Qwen3 1000000)",
    "norm_eps": "RMSNorm epsilon (llama2.c 1e-5, Qwen3 1e-6)",
    "qk_norm": "RMSNorm of each query and key head before RoPE, with learned gains (Qwen3)",
    "tie_embeddings": "the classifier is the token embedding (--no-tie-embeddings: a separate output matrix)",
}
# Fields a preset derives from others unless it gives them: overriding one of those resets the
# field to the preset's own value (0 = derive again).
DERIVED_FIELDS = {"hidden_dim": ("dim",), "n_kv_heads": ("n_heads",), "head_dim": ("dim", "n_heads")}
METAVARS = {"preset": "NAME", "data": "GLOB", "val_data": "GLOB", "tokenizer": "PATH", "out": "DIR",
            "pipeline": "{static,dynamic}", "backend": "{auto,ref,ane}", "ckpt": "PATH",
            "allreduce": "{after,overlap}", "dist_timeout": "SECONDS",
            "init_from": "PATH", "wandb": "PROJECT"}
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def lr_at(step, cfg):
    """Learning rate for 0-based optimizer ``step``: linear warmup to ``cfg.lr`` over
    ``warmup_steps`` (step 0 gets lr/warmup), then cosine decay to ``lr*min_lr_ratio`` at the
    last step (``steps - 1``), constant at the floor after it."""
    floor = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.steps - 1 - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def build_parser():
    p = argparse.ArgumentParser(
        prog="train.py", argument_default=argparse.SUPPRESS,
        description="Train a Llama-2-style model with anetrain. Settings come from the preset, then "
                    "--config FILE (TOML or JSON), then the command line, which wins.",
        epilog="presets: " + "; ".join(f"{k}: {v}" for k, v in PRESET_NOTES.items()))
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings "
                   "(training settings at top level, model fields in a [model] table)")
    for name, f in _TRAIN_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = f" (default: {f.default})" if f.default not in ("", False) else ""
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            p.add_argument(flag, type=typ, metavar=METAVARS.get(name, "N" if typ is int else "X"),
                           help=f.metadata["help"] + default)
    g = p.add_argument_group("model shape (override the preset)")
    for name, text in MODEL_FLAGS.items():
        flag, kind = "--" + name.replace("_", "-"), _FIELD_TYPES[name]
        if kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            g.add_argument(flag, type=kind, metavar="N" if kind is int else "X", help=text)
    return p


def read_config_file(path):
    """A dict from a TOML (``.toml``) or JSON file; UsageError when unreadable."""
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11: the same parser as a package
                import tomli as tomllib
            with open(path, "rb") as f:
                return tomllib.load(f)
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found")
    except (OSError, ValueError) as e:
        raise UsageError(f"config file {path} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}")


def _split_file_settings(path, settings):
    """(train settings, model settings) from a config file's dict, rejecting unknown keys."""
    if not isinstance(settings, dict):
        raise UsageError(f"config file {path} holds a {type(settings).__name__}, not a table of settings; "
                         f"write an object such as {{\"steps\": 100, \"model\": {{\"dim\": 128}}}}")
    settings = dict(settings)
    model = settings.pop("model", {})
    if not isinstance(model, dict):
        raise UsageError(f"config file {path}: 'model' must be a table of model fields")
    for k in settings:
        if k not in _TRAIN_FIELDS:
            raise UsageError(f"config file {path}: unknown setting {k!r}; see train.py --help")
    for k in model:
        if k not in MODEL_FLAGS:
            raise UsageError(f"config file {path}: unknown model field {k!r}; "
                             f"choose from {', '.join(MODEL_FLAGS)}")
    return settings, model


def _typed(name, value, source):
    want = _TRAIN_FIELDS[name].type
    want = {"int": int, "float": float, "str": str, "bool": bool}.get(want, want)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise UsageError(f"{source}: {name} must be {want.__name__}, got {value!r}")
    return value


SHIPPED_VOCAB = PRESETS["tiny"]["vocab_size"]  # the shipped data/ tokenizer's size


def apply_shipped_data_defaults(train, model):
    """With no --data, train on the corpus shipped in data/ with its val shards and tokenizer,
    which needs a model whose vocabulary is the shipped tokenizer's."""
    if train.data:
        return
    if model.vocab_size != SHIPPED_VOCAB:
        raise UsageError(f"model vocab_size {model.vocab_size} does not fit the shipped data/ corpus "
                         f"({SHIPPED_VOCAB}-piece tokenizer); pass --data GLOB with shards made by the "
                         f"model's tokenizer (scripts/prepare_data.py) or --vocab-size {SHIPPED_VOCAB}")
    train.data = os.path.join(REPO_DATA, "train_*.bin")
    train.val_data = train.val_data or os.path.join(REPO_DATA, "val_*.bin")
    train.tokenizer = train.tokenizer or os.path.join(REPO_DATA, "tokenizer.model")


def parse_args(argv, init_model=None):
    """(ModelConfig, TrainConfig) from command-line arguments; UsageError on bad input.

    ``init_model(path)`` gives the ModelConfig of the ``--init-from`` model (anetrain/modelfile.py;
    passed in because reading model files sits above this module)."""
    args = vars(build_parser().parse_args(argv))
    file_train, file_model = {}, {}
    if "config" in args:
        path = args.pop("config")
        file_train, file_model = _split_file_settings(path, read_config_file(path))
        file_train = {k: _typed(k, v, f"config file {path}") for k, v in file_train.items()}
    cli_model = {k: args.pop(k) for k in MODEL_FLAGS if k in args}
    train = TrainConfig(**{**file_train, **args})
    if train.ckpt:
        train.resume = True
    train.validate()
    base = model_preset(train.preset).to_dict()
    overrides = {**file_model, **cli_model}
    for k, v in overrides.items():
        kind = _FIELD_TYPES[k]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            overrides[k] = v = float(v)
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            what = {int: "an integer", float: "a number", bool: "true or false"}[kind]
            raise UsageError(f"model field {k} must be {what}, got {v!r}")
    if train.init_from and init_model is not None:
        preset_given = "preset" in args or "preset" in file_train
        model = model_of_init(train.init_from, init_model(train.init_from),
                              {**(PRESETS[train.preset] if preset_given else {}), **overrides})
    else:
        if overrides:
            base["name"] = f"{train.preset}+custom"
            for k, sources in DERIVED_FIELDS.items():
                if k not in overrides and any(f in overrides for f in sources):
                    base[k] = PRESETS[train.preset].get(k, 0)
        model = ModelConfig(**{**base, **overrides})
    check_fits_in_memory(model)
    if (train.ane_shaped or ane_shaped_from_env()) and model.seq_len % 32:
        raise UsageError(f"--ane-shaped (or ANETRAIN_ANE_SHAPED=1) needs --seq-len a multiple of 32 (the ANE's "
                         f"64-byte rows), got {model.seq_len}")
    apply_shipped_data_defaults(train, model)
    if not train.tokenizer and train.init_from:
        train.tokenizer = tokenizer.beside(train.init_from) or ""
    return model, train


def model_of_init(path, found, asked):
    """The run's ModelConfig when it starts from the model ``found`` at ``path``: that model's shape,
    trained at ``asked``'s seq_len if given, else the model's. Any other field ``asked`` (explicit
    model flags, or an explicitly chosen preset) must agree with the model: UsageError otherwise.
    0 for hidden_dim, n_kv_heads or head_dim asks for nothing (it means "the default")."""
    diff = [f"{k} {getattr(found, k)} vs {v}" for k, v in asked.items()
            if k != "seq_len" and not (v == 0 and k in DERIVED_FIELDS) and getattr(found, k) != v]
    if diff:
        raise UsageError(f"--init-from {path} holds another model ({', '.join(diff)} requested); its shape is "
                         f"the run's, so drop those model flags (or --preset), or pick another --init-from")
    return ModelConfig(**{**found.to_dict(), "seq_len": asked.get("seq_len", found.seq_len)})


def ane_shaped_from_env():
    """ANETRAIN_ANE_SHAPED as True/False, or None when unset (the trainer then decides by backend)."""
    v = os.environ.get("ANETRAIN_ANE_SHAPED", "")
    if v == "":
        return None
    if v not in ("0", "1"):
        raise UsageError(f"ANETRAIN_ANE_SHAPED must be 0 or 1, got {v!r}")
    return v == "1"


def physical_memory_bytes():
    """This machine's RAM, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(model):
    """UsageError naming the memory a model needs when it exceeds this machine's RAM, before the
    native trainer tries to allocate it (which ends in std::bad_alloc or the OOM killer)."""
    need, have = model.training_bytes(), physical_memory_bytes()
    if have and need > have:
        raise UsageError(f"this model needs at least {need / 2**30:.1f} GiB for weights, gradients, AdamW "
                         f"state and activations of one {model.seq_len}-token sequence, more than this "
                         f"machine's {have / 2**30:.1f} GiB; lower --dim, --n-layers, --seq-len or --vocab-size")
