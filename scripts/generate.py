#!/usr/bin/env python3
"""Generate text from a trained model with the KV-cache decoder, streaming it as it comes.

    python scripts/generate.py runs/default --prompt "Once upon a time"
    python scripts/generate.py runs/default/ckpt_00000600.safetensors --temperature 0 --max-tokens 50
    python scripts/generate.py stories15M.bin --tokenizer tokenizer.bin --top-p 0.9 --seed 7
    python scripts/generate.py hf_model --prompt "Tom and" --top-k 40

The model is a run directory (its newest checkpoint), a checkpoint .safetensors, a llama2.c model
.bin (version 0 or 1) or a Hugging Face model directory. The tokenizer is the run's sentencepiece
model, the HF directory's tokenizer.model, or tokenizer.model / tokenizer.bin beside a .bin, unless
--tokenizer names one (a sentencepiece .model or a llama2.c tokenizer.bin).
The text goes to stdout; the speed (tokens per second) to stderr at the end.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain import generation, modelfile  # noqa: E402
from anetrain.errors import UsageError, exit_on_error  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run directory, checkpoint .safetensors, llama2.c model .bin or Hugging Face "
                                  "model directory")
    ap.add_argument("--prompt", default="", help="text to continue (default: none, the story starts afresh)")
    ap.add_argument("--max-tokens", type=int, default=256, metavar="N",
                    help="tokens to generate at most; generation also stops at EOS and when the model's context "
                         "(its seq_len) is full (default: 256)")
    ap.add_argument("--temperature", type=float, default=0.8, metavar="T",
                    help="softmax temperature; 0 picks the most likely token every time (default: 0.8)")
    ap.add_argument("--top-k", type=int, default=0, metavar="K",
                    help="sample from the K most likely tokens only (default: 0, no limit)")
    ap.add_argument("--top-p", type=float, default=0.9, metavar="P",
                    help="sample from the fewest most likely tokens whose probability reaches P (default: 0.9; "
                         "1: no limit)")
    ap.add_argument("--seed", type=int, default=None, metavar="N",
                    help="seed of the sampling, for a repeatable text (default: a fresh one each run)")
    ap.add_argument("--tokenizer", default="", metavar="PATH",
                    help="sentencepiece .model or llama2.c tokenizer.bin (default: the run's own)")
    args = ap.parse_args(argv)
    generation.check_sampling(args.temperature, args.top_k, args.top_p, args.max_tokens)
    return args


def open_tokenizer(args, info, vocab_size):
    path = args.tokenizer or generation.tokenizer_for(info)
    if not path:
        raise UsageError(f"{args.model} names no tokenizer; pass --tokenizer with a sentencepiece .model, a "
                         f"llama2.c tokenizer.bin or a tokenizer.json")
    if not os.path.isfile(path):
        raise UsageError(f"tokenizer {path} does not exist; pass --tokenizer with the model's sentencepiece .model "
                         f"or llama2.c tokenizer.bin")
    tok = generation.load_tokenizer(path)
    if tok.vocab_size != vocab_size:
        raise UsageError(f"tokenizer {path} has {tok.vocab_size} pieces but the model's vocabulary has "
                         f"{vocab_size}; pass the tokenizer the model was trained with")
    return tok


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg, weights, info = modelfile.read(args.model)
    tok = open_tokenizer(args, info, cfg.vocab_size)
    prompt = [tok.doc_start] + tok.encode(args.prompt)
    dec = generation.decoder_of(cfg, weights)
    del weights  # the decoder holds them
    tokens = generation.generate(dec, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_at_eos=bool(tok.stop),
                                 eos_id=tok.stop)
    stream = generation.TextStream(tok, prompt[-1])
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    n, t0 = 0, time.perf_counter()
    t_first = t_end = t0
    try:
        for token in tokens:
            if n == 0:
                t_first = time.perf_counter()
            n += 1
            out.write(stream.push(token))
            out.flush()
        t_end = time.perf_counter()
    finally:
        out.write(stream.flush() + "\n")
        out.flush()
    why = "context full" if dec.position == dec.context and n < args.max_tokens else None
    why = why or ("EOS" if n < args.max_tokens else None)
    stopped = f" (stopped: {why})" if why else ""
    tokens_of = lambda k: f"{k} token{'' if k == 1 else 's'}"
    if n == 0:
        print(f"0 tokens{stopped}; prompt of {tokens_of(len(prompt))} in {(t_end - t0) * 1e3:.0f} ms", file=sys.stderr)
        return 0
    rate = f"{(n - 1) / (t_end - t_first):.1f} tok/s" if n > 1 else "one token"
    print(f"{tokens_of(n)}{stopped}: {rate}; prompt of {tokens_of(len(prompt))} and the first token in "
          f"{(t_first - t0) * 1e3:.0f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
