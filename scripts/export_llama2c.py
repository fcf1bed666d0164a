#!/usr/bin/env python3
"""Export a training checkpoint's weights as a llama2.c model file (legacy .bin for run.c).

    python scripts/export_llama2c.py runs/default/ckpt_00000600.safetensors model.bin
    python scripts/export_llama2c.py runs/default model.bin        # the run's newest checkpoint
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain import checkpoint, llama2c  # noqa: E402
from anetrain.config import ModelConfig  # noqa: E402
from anetrain.errors import CheckpointError, exit_on_error  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint file, or a run directory (its newest checkpoint)")
    ap.add_argument("output", help="the llama2.c .bin to write")
    args = ap.parse_args()
    path = args.checkpoint
    if os.path.isdir(path):
        path = checkpoint.latest(path)
        if path is None:
            raise CheckpointError(f"{args.checkpoint}: no checkpoint in this run directory")
    arrays, meta = checkpoint.load(path)
    cfg = ModelConfig(**meta["config"])
    weights = {f"{name[len('weight:'):]}.weight": a for name, a in arrays.items() if name.startswith("weight:")}
    llama2c.write_model(args.output, cfg, weights)
    print(f"wrote {args.output}: {cfg.name}, {cfg.n_params() / 1e6:.2f}M params, step {meta['step']}")


if __name__ == "__main__":
    exit_on_error(main)
