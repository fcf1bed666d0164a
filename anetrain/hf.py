"""Hugging Face model directories: ``config.json`` and safetensors weights, read and written.

A directory holds ``config.json`` and either ``model.safetensors`` or ``model.safetensors.index.json``
(whose ``weight_map`` names the shard holding each tensor). ``read_hf`` returns the model in
anetrain's terms (a ModelConfig and float32 arrays under llama2.c's names); ``write_hf`` writes
one. Neither needs torch or transformers.

One table, ``ARCHITECTURES``, says per HF architecture which HF tensor is which llama2.c tensor,
which config.json values the architecture fixes, and which tensors' rows are in HF's rotary order.

The rotary order. llama2.c rotates the adjacent pairs (2i, 2i+1) of each head by the angle
pos * theta^(-2i/hd); HF's ``rotate_half`` rotates the pairs (i, i + hd/2) by that same angle. So
the two compute the same attention when, within every head, HF's row i is llama2.c's row 2i and
HF's row i + hd/2 is llama2.c's row 2i + 1, for the query and the key projections alike (so
q . k is unchanged) and for the key/value heads of GQA as for the query heads. ``to_hf_rows``
and ``from_hf_rows`` apply that permutation to axis 0 in blocks of head_dim rows.

safetensors' own numpy reader knows no bfloat16, the dtype most HF checkpoints ship in, so
``read_safetensors`` reads the documented layout itself (u64 header length, JSON header, data);
writing goes through checkpoint.write_safetensors.
"""
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import llama2c
from .checkpoint import write_safetensors
from .config import ModelConfig
from .errors import AnetrainError, ModelFileError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_NAME = "tokenizer.model"  # a sentencepiece model, as Llama 2's HF directories hold it
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
# config.json fields -> ModelConfig fields (every Llama-family architecture)
CONFIG_FIELDS = {"hidden_size": "dim", "intermediate_size": "hidden_dim", "num_hidden_layers": "n_layers",
                 "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads", "vocab_size": "vocab_size",
                 "max_position_embeddings": "seq_len", "rms_norm_eps": "norm_eps"}
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Architecture:
    """How one HF architecture maps onto llama2.c's Transformer."""
    name: str                 # config.json "architectures"[0]
    model_type: str
    globals: dict             # HF tensor name -> llama2.c name
    layer: dict               # HF name after "model.layers.{i}." -> llama2.c layer kind (llama2c.layer_names)
    rotary: tuple             # llama2.c layer kinds whose rows per head are in the rotary order
    fixed: dict = field(default_factory=dict)     # config.json values the architecture requires
    defaults: dict = field(default_factory=dict)  # the architecture's config defaults for absent fields


ARCHITECTURES = {a.name: a for a in [
    Architecture(
        name="LlamaForCausalLM", model_type="llama",
        globals={"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
                 "lm_head.weight": "output.weight"},
        layer={"input_layernorm.weight": "attention_norm", "self_attn.q_proj.weight": "wq",
               "self_attn.k_proj.weight": "wk", "self_attn.v_proj.weight": "wv", "self_attn.o_proj.weight": "wo",
               "post_attention_layernorm.weight": "ffn_norm", "mlp.gate_proj.weight": "w1",
               "mlp.down_proj.weight": "w2", "mlp.up_proj.weight": "w3"},
        rotary=("wq", "wk"),
        fixed={"hidden_act": "silu", "attention_bias": False, "mlp_bias": False},
        defaults={"rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "rope_theta": 10000.0,
                  "tie_word_embeddings": False}),
]}
DEFAULT_ARCHITECTURE = "LlamaForCausalLM"
# HF tensors that are derived buffers, not parameters (older Llama checkpoints saved them)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def to_hf_rows(w, head_dim):
    """llama2.c's rows -> HF's rotary order, per block of ``head_dim`` rows along axis 0."""
    heads = w.shape[0] // head_dim
    return w.reshape(heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def from_hf_rows(w, head_dim):
    """HF's rotary order -> llama2.c's rows (the inverse of ``to_hf_rows``)."""
    heads = w.shape[0] // head_dim
    return w.reshape(heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_names(arch, cfg):
    """{HF name: llama2.c name} of every parameter tensor of ``cfg`` (the classifier included)."""
    names = dict(arch.globals)
    for i in range(cfg.n_layers):
        ours = llama2c.layer_names(i)
        names.update({f"model.layers.{i}.{hf}": ours[kind] for hf, kind in arch.layer.items()})
    return names


def rotary_names(arch, cfg):
    return {llama2c.layer_names(i)[kind] for i in range(cfg.n_layers) for kind in arch.rotary}


# ---------------------------------------------------------------- config.json
def _load_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing; {what}")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not readable JSON ({e}); {what}")


def read_config(model_dir):
    """(ModelConfig, Architecture, the config.json dict) of an HF model directory, or a
    ModelFileError saying what anetrain cannot take from it."""
    if not os.path.isdir(model_dir):
        raise ModelFileError(f"{model_dir} is not a directory; give a Hugging Face model directory "
                             f"(config.json and model.safetensors)")
    path = os.path.join(model_dir, CONFIG_NAME)
    raw = _load_json(path, "a Hugging Face model directory holds config.json beside its weights")
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path} holds a {type(raw).__name__}, not a table of settings")
    names = raw.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else next(  # older configs name only the type
        (a.name for a in ARCHITECTURES.values() if a.model_type == raw.get("model_type")), None)
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ModelFileError(f"{path}: architecture {name!r} is not supported; anetrain reads "
                             f"{', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    settings = {**arch.defaults, **raw}
    for key, want in arch.fixed.items():
        if key in raw and raw[key] != want:
            raise ModelFileError(f"{path}: {key} is {raw[key]!r}; anetrain's {arch.name} needs {want!r}")
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise ModelFileError(f"{path}: {', '.join(missing)} missing; not a complete {arch.name} config")
    fields = {}
    for key, ours in CONFIG_FIELDS.items():
        if key not in settings or settings[key] is None:
            continue
        value = settings[key]
        want = float if ours == "norm_eps" else int
        if isinstance(value, bool) or not isinstance(value, (int, float) if want is float else int):
            raise ModelFileError(f"{path}: {key} must be {'a number' if want is float else 'an integer'}, "
                                 f"got {value!r}")
        fields[ours] = want(value)
    fields["rope_theta"] = rope_theta(path, settings)
    try:
        cfg = ModelConfig(name=os.path.basename(os.path.normpath(model_dir)), **fields)
    except AnetrainError as e:
        raise ModelFileError(f"{path} describes a model anetrain cannot build: {e}")
    head_dim = settings.get("head_dim")
    if head_dim is not None and head_dim != cfg.head_dim:
        raise ModelFileError(f"{path}: head_dim {head_dim} is not hidden_size / num_attention_heads "
                             f"({cfg.dim} / {cfg.n_heads}), which anetrain's model needs")
    return cfg, arch, raw


def rope_theta(path, settings):
    """RoPE's theta from config.json: ``rope_parameters`` (transformers 5) or the older top-level
    ``rope_theta``; any rope scaling (``rope_type`` other than default) is refused."""
    params = settings.get("rope_parameters") or settings.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ModelFileError(f"{path}: rope_parameters must be a table, got {params!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
        raise ModelFileError(f"{path}: RoPE scaling {kind!r} is not supported; anetrain's model uses plain RoPE")
    theta = params.get("rope_theta", settings.get("rope_theta"))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 0:
        raise ModelFileError(f"{path}: rope_theta must be a finite number > 0, got {theta!r}")
    return float(theta)


def hf_config(cfg, arch, tied):
    """config.json's dict for ``cfg`` (float32 weights)."""
    return {
        "architectures": [arch.name], "model_type": arch.model_type,
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
        # both spellings of each: transformers 5 reads rope_parameters and dtype, earlier readers
        # rope_theta and torch_dtype
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": tied, "dtype": "float32", "torch_dtype": "float32", **arch.fixed,
    }


# ---------------------------------------------------------------- safetensors
READ_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}


def read_safetensors(path, names=None):
    """{name: float32 array} of the tensors ``names`` (default: all) of one safetensors file, from
    F32, F16, F64 or BF16 data; ModelFileError for a truncated or malformed file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= size - 8:
                raise ModelFileError(f"{path}: not a safetensors file (header length {n} in a {size}-byte file)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}")
    except ValueError as e:
        raise ModelFileError(f"{path}: not a safetensors file (bad header: {e})")
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for name in header if names is None else names:
        info = header.get(name)
        if not isinstance(info, dict):
            raise ModelFileError(f"{path}: tensor {name} is missing")
        dtype = READ_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModelFileError(f"{path}: tensor {name} has dtype {info.get('dtype')}; anetrain reads "
                                 f"{', '.join(READ_DTYPES)}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
            raise ModelFileError(f"{path}: tensor {name} has a malformed entry {info}; not a safetensors file")
        start, end = offsets
        if not (0 <= start <= end <= len(data)) or end - start != dtype.itemsize * math.prod(shape):
            raise ModelFileError(f"{path}: tensor {name} ({info}) does not fit the file; it is truncated or corrupt")
        shape = tuple(shape)
        raw = data[start:end].view(dtype).reshape(shape)
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            out[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = raw.astype(np.float32)
    return out


def weight_files(model_dir):
    """{safetensors file: [tensor names]} of an HF model directory (one file, or the shards of an index)."""
    index = os.path.join(model_dir, INDEX_NAME)
    if os.path.exists(index):
        weight_map = _load_json(index, "the index of a sharded checkpoint")
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ModelFileError(f"{index} has no weight_map; it is not a safetensors index")
        files = {}
        for name, shard in weight_map.items():
            files.setdefault(os.path.join(model_dir, shard), []).append(name)
        return files
    single = os.path.join(model_dir, WEIGHTS_NAME)
    if os.path.exists(single):
        return {single: None}
    others = sorted(f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth", ".gguf")))
    hint = f" (it has {', '.join(others)}; save it with safe_serialization)" if others else ""
    raise ModelFileError(f"{model_dir}: no {WEIGHTS_NAME} or {INDEX_NAME}; anetrain reads safetensors "
                         f"weights{hint}")


# ---------------------------------------------------------------- the model
def read_hf(model_dir):
    """(ModelConfig, {llama2.c name: float32 array}, extras) from an HF model directory.

    ``output.weight`` is present only when the model has an untied classifier that differs from
    the token embedding. extras: ``architecture`` (its name) and ``config`` (config.json's dict)."""
    cfg, arch, raw = read_config(model_dir)
    tensors = {}
    for path, names in weight_files(model_dir).items():
        tensors.update(read_safetensors(path, names))
    tied = bool({**arch.defaults, **raw}.get("tie_word_embeddings"))
    if cfg.n_layers > len(tensors):  # before listing every layer's names, which a hostile count makes huge
        raise ModelFileError(f"{model_dir}: config.json says {cfg.n_layers} layers but the weights hold only "
                             f"{len(tensors)} tensors; the config and the weights do not belong together")
    names = hf_names(arch, cfg)
    classifier = next(k for k, v in arch.globals.items() if v == "output.weight")
    unknown = sorted(k for k in tensors if k not in names and not k.endswith(IGNORED_SUFFIXES))
    if unknown:
        raise ModelFileError(f"{model_dir}: tensors {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                             f"are not part of {arch.name} as anetrain knows it")
    want = llama2c.weight_shapes(cfg, shared_classifier=True)
    arrays = {}
    for hf, ours in names.items():
        if hf == classifier:
            continue
        if hf not in tensors:
            raise ModelFileError(f"{model_dir}: weight {hf} is missing")
        if tensors[hf].shape != want[ours]:
            raise ModelFileError(f"{model_dir}: {hf} has shape {tensors[hf].shape}, config.json needs {want[ours]}")
        arrays[ours] = tensors[hf]
    for ours in rotary_names(arch, cfg):
        arrays[ours] = from_hf_rows(arrays[ours], cfg.head_dim)
    if not tied:
        if classifier not in tensors:
            raise ModelFileError(f"{model_dir}: tie_word_embeddings is false but {classifier} is missing")
        lm_head = tensors[classifier]
        if lm_head.shape != want["tok_embeddings.weight"]:
            raise ModelFileError(f"{model_dir}: {classifier} has shape {lm_head.shape}, config.json needs "
                                 f"{want['tok_embeddings.weight']}")
        if not np.array_equal(lm_head, arrays["tok_embeddings.weight"]):
            arrays["output.weight"] = lm_head
    return cfg, arrays, {"architecture": arch.name, "config": raw}


def write_hf(model_dir, cfg, arrays, architecture=DEFAULT_ARCHITECTURE, extra_config=None):
    """Write ``arrays`` (llama2.c names, the config ``cfg``) as an HF model directory: config.json
    (with ``extra_config`` merged in, e.g. token ids) and model.safetensors in float32. The
    classifier is tied unless ``output.weight`` is given and differs from the embedding."""
    arch = ARCHITECTURES[architecture]
    tied = llama2c.check_weights(model_dir, cfg, arrays)
    rotary = rotary_names(arch, cfg)
    tensors = {}
    for hf, ours in hf_names(arch, cfg).items():
        if ours not in arrays or (ours == "output.weight" and tied):
            continue
        w = np.asarray(arrays[ours], dtype=np.float32)
        tensors[hf] = np.ascontiguousarray(to_hf_rows(w, cfg.head_dim) if ours in rotary else w)
    make_dir(model_dir)
    config = {**hf_config(cfg, arch, tied), **(extra_config or {})}
    llama2c.write_whole_file(os.path.join(model_dir, WEIGHTS_NAME),
                             lambda f: write_safetensors(f, tensors, {"format": "pt"}))
    llama2c.write_whole_file(os.path.join(model_dir, CONFIG_NAME),
                             lambda f: f.write((json.dumps(config, indent=2) + "\n").encode("utf-8")))
    stale = os.path.join(model_dir, INDEX_NAME)  # an index left there would win over the new file
    if os.path.exists(stale):
        os.unlink(stale)


def make_dir(model_dir):
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise ModelFileError(f"cannot write {model_dir}: {e.strerror}; choose a writable directory")


def write_tokenizer(model_dir, sp_model_path, seq_len):
    """Put a sentencepiece tokenizer.model into an HF model directory with the tokenizer_config.json
    that has transformers load it as a LlamaTokenizer (which needs protobuf to convert it); returns
    the token ids for config.json."""
    import sentencepiece as spm

    try:
        with open(sp_model_path, "rb") as f:
            blob = f.read()
        sp = spm.SentencePieceProcessor(model_proto=blob)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f"cannot read the tokenizer {sp_model_path} ({e}); give a sentencepiece .model")
    special = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    special = {k: i for k, i in special.items() if i >= 0}
    settings = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": "bos" in special, "add_eos_token": False,
                "model_max_length": seq_len, **{f"{k}_token": sp.id_to_piece(i) for k, i in special.items()}}
    make_dir(model_dir)
    llama2c.write_whole_file(os.path.join(model_dir, TOKENIZER_NAME), lambda f: f.write(blob))
    llama2c.write_whole_file(os.path.join(model_dir, TOKENIZER_CONFIG_NAME),
                             lambda f: f.write((json.dumps(settings, indent=2) + "\n").encode("utf-8")))
    return {f"{k}_token_id": i for k, i in special.items() if k != "unk"}
