#!/usr/bin/env python3
"""Export a model as a Hugging Face Llama directory (config.json, model.safetensors in float32),
loadable with transformers' LlamaForCausalLM.from_pretrained; the run's sentencepiece tokenizer
goes beside it as tokenizer.model with a tokenizer_config.json.

    python scripts/export_hf.py runs/default hf_model          # the run's newest checkpoint
    python scripts/export_hf.py runs/default/ckpt_00000600.safetensors hf_model
    python scripts/export_hf.py stories15M.bin hf_model --tokenizer tokenizer.model
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain import hf, modelfile  # noqa: E402
from anetrain.errors import UsageError, exit_on_error  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=f"the model to export: {modelfile.WHAT} (a run: its newest checkpoint)")
    ap.add_argument("out_dir", help="the directory to write (made if missing)")
    ap.add_argument("--tokenizer", metavar="PATH", default="",
                    help="sentencepiece .model to put beside the weights (default: the run's, if any)")
    args = ap.parse_args()
    if args.tokenizer and not os.path.isfile(args.tokenizer):
        raise UsageError(f"--tokenizer {args.tokenizer} is not a file; give a sentencepiece .model")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"{args.out_dir} is a file; give a directory to write the model into")
    cfg, weights, info = modelfile.read(args.model, allow_untied=True)
    if os.path.abspath(info["path"]) == os.path.abspath(args.out_dir):
        raise UsageError(f"{args.out_dir} is the model being exported; choose another directory")
    tokenizer = args.tokenizer or modelfile.run_tokenizer(info)
    token_ids = hf.write_tokenizer(args.out_dir, tokenizer, cfg.seq_len) if tokenizer else {}
    hf.write_hf(args.out_dir, cfg, weights, extra_config=token_ids)
    print(f"wrote {args.out_dir}: {cfg.n_params() / 1e6:.2f}M params"
          f"{', tokenizer ' + tokenizer if tokenizer else ', no tokenizer'}, from {modelfile.describe(info)}")


if __name__ == "__main__":
    exit_on_error(main)
