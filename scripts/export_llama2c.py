#!/usr/bin/env python3
"""Export a model as a llama2.c model file for run.c: export version 0 (legacy, the default) or 1.

    python scripts/export_llama2c.py runs/default model.bin        # the run's newest checkpoint
    python scripts/export_llama2c.py runs/default/ckpt_00000600.safetensors model.bin --version 1
    python scripts/export_llama2c.py hf_model_dir model.bin        # from a Hugging Face Llama
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain import llama2c, modelfile  # noqa: E402
from anetrain.errors import exit_on_error  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=f"the model to export: {modelfile.WHAT} (a run: its newest checkpoint)")
    ap.add_argument("output", help="the llama2.c .bin to write")
    ap.add_argument("--version", type=int, choices=llama2c.VERSIONS, default=0,
                    help="llama2.c export version: 0 (legacy header, what run.c reads everywhere) or 1 "
                         "(256-byte header with magic and version) (default: 0)")
    args = ap.parse_args()
    cfg, weights, info = modelfile.read(args.model, allow_untied=True)
    llama2c.write_model(args.output, cfg, weights, version=args.version)
    print(f"wrote {args.output}: version {args.version}, {cfg.n_params() / 1e6:.2f}M params, from {modelfile.describe(info)}")


if __name__ == "__main__":
    exit_on_error(main)
