"""Open a model wherever it is kept, telling the kind by the path itself:

- a run directory (``scripts/train.py --out``): its newest checkpoint;
- a checkpoint file (``ckpt_*.safetensors``, anetrain/checkpoint.py);
- a llama2.c model ``.bin``, export version 0 or 1 (anetrain/llama2c.py);
- a Hugging Face model directory, one with a config.json (anetrain/hf.py).

Every kind comes back the same way: a ModelConfig and float32 weights under llama2.c's names.
"""
import os

from . import checkpoint, hf, llama2c
from .config import ModelConfig
from .errors import ModelFileError

WHAT = "a run directory, a checkpoint, a llama2.c model .bin or a Hugging Face model directory"
WEIGHT_PREFIX = "weight:"  # how checkpoints name the weights among the AdamW moments


def kind_of(path):
    """"run", "checkpoint", "llama2c" or "hf"; ModelFileError when the path is none of them."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, hf.CONFIG_NAME)):
            return "hf"
        if checkpoint.list_checkpoints(path):
            return "run"
        raise ModelFileError(f"{path} is a directory with neither config.json (a Hugging Face model) nor "
                             f"checkpoints (a run); give {WHAT}")
    if not os.path.exists(path):
        raise ModelFileError(f"{path} does not exist; give {WHAT}")
    return "checkpoint" if path.endswith(checkpoint.SUFFIX) else "llama2c"


def read_checkpoint(path):
    """(ModelConfig, weights, checkpoint path, its metadata) of a checkpoint or a run's newest."""
    if os.path.isdir(path):
        path = checkpoint.latest(path) or path
    arrays, meta = checkpoint.load(path, keep=WEIGHT_PREFIX)  # the AdamW moments are checked, not kept
    weights = {f"{name[len(WEIGHT_PREFIX):]}.weight": a for name, a in arrays.items()}
    return ModelConfig(**meta["config"]), weights, path, meta


def read_config(path):
    """The ModelConfig of the model at ``path``, reading as little as the format allows."""
    kind = kind_of(path)
    if kind == "hf":
        return hf.read_config(path)[0]
    if kind == "llama2c":
        return llama2c.read_config(path)
    return read_checkpoint(path)[0]


def read(path):
    """(ModelConfig, {llama2.c name: float32 array}, info) of the model at ``path``; info holds
    ``kind``, ``path`` (the file read, for a run its checkpoint) and ``meta`` (a checkpoint's
    metadata, an HF model's ``architecture`` and ``config``, a llama2.c file's nothing). The
    weights hold ``output.weight`` exactly when the config unties the classifier."""
    kind = kind_of(path)
    meta = {}
    if kind == "hf":
        cfg, weights, meta = hf.read_hf(path)
    elif kind == "llama2c":
        cfg, weights = llama2c.read_model(path)
    else:
        cfg, weights, path, meta = read_checkpoint(path)
    return cfg, weights, {"kind": kind, "path": path, "meta": meta}


def describe(info):
    """Where a model came from (``read``'s info), for a command's closing line."""
    step = info["meta"].get("step") if info["kind"] in ("run", "checkpoint") else None
    return info["path"] + (f" (step {step})" if step is not None else "")


def run_tokenizer(info):
    """The sentencepiece model a run trained with (``read``'s info), when it still exists."""
    path = info["meta"].get("train", {}).get("tokenizer", "") if info["kind"] in ("run", "checkpoint") else ""
    return path if path and os.path.isfile(path) else None
