#!/usr/bin/env python3
"""Generation speed: anetrain's KV-cache decoder against Hugging Face transformers' KV-cache
generate (LlamaForCausalLM, PyTorch), same run, same model, same prompt, same threads, greedy.

Per preset (random weights in the preset's shape, written once as a llama2.c model file and as a
Hugging Face directory), each round runs two fresh processes: ours (anetrain.generate from the
file, as scripts/generate.py does) and transformers' (LlamaForCausalLM.generate(do_sample=False,
use_cache=True) on the same weights exported by anetrain.hf). After a short warm-up each times
1 + --repeats greedy generations of --tokens new tokens and keeps the fastest. Ours puts before
each repeat a window of large memcpys as long as a generation (bytes copied per second) and keeps
the fastest window: generation and copy see the machine over windows of the same length. The
bandwidth bound is that bandwidth over the fp32 weight bytes a token reads (every weight once,
the classifier included); a memcpy reads and writes every byte, so a decoder that only reads can
beat it. The decode memory is the process's peak RSS above what it held before opening the
model, against the weights plus the KV cache. Reported: the median over rounds of each ratio.

    python scripts/bench_generate.py                      # stories15M and stories110M shapes
    python scripts/bench_generate.py --presets stories15M --rounds 5 --tokens 128   # longer, steadier
Targets (issue 17): ahead of transformers on both shapes; Stories110M within 1.2x of the
bandwidth bound; decode memory no more than the weights plus the KV cache plus 10%.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's anetrain, in the worker subprocesses too
from anetrain import bench  # noqa: E402

PROMPT = [1, 403, 2011, 29892, 727]  # BOS and four ids


class Memcpy:
    """A large memcpy's bandwidth: bytes copied per second by np.copyto between two 256 MiB
    buffers (both touched first), averaged over a window of ``seconds``."""

    def __init__(self, nbytes=256 << 20):
        import numpy as np

        self.src = np.ones(nbytes // 4, np.float32)
        self.dst = np.zeros_like(self.src)

    def bandwidth(self, seconds):
        import numpy as np

        copies, start = 0, time.perf_counter()
        while not copies or time.perf_counter() - start < seconds:
            np.copyto(self.dst, self.src)
            copies += 1
        return copies * self.src.nbytes / (time.perf_counter() - start)


def write_model(preset, path, hf_dir, seed=0):
    """Random weights in the preset's shape as a llama2.c model file (ours) and an exported Hugging
    Face directory (transformers'): linears N(0, 1/fan_in), the embedding N(0, 1) (logits far
    apart, so both decoders' greedy choices are clear), norms 1."""
    import numpy as np

    from anetrain import hf, llama2c
    from anetrain.config import model_preset

    cfg = model_preset(preset)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in llama2c.weight_shapes(cfg).items():
        a = np.empty(shape, np.float32)
        if len(shape) == 1:
            a.fill(1.0)
        else:
            rng.standard_normal(out=a, dtype=np.float32)
            if not name.startswith("tok_embeddings"):
                a *= np.float32(1 / np.sqrt(shape[1]))
        arrays[name] = a
    llama2c.write_model(path, cfg, arrays)
    hf.write_hf(hf_dir, cfg, arrays)


def timed(fn, n):
    """(tokens per second, tokens) of one call of fn(), which makes n new tokens."""
    t = time.perf_counter()
    tokens = fn()
    assert len(tokens) == n, (len(tokens), n)
    return n / (time.perf_counter() - t), tokens


def run_ours(path, tokens, threads, repeats):
    import psutil

    import anetrain
    from anetrain import generation

    anetrain.set_num_threads(threads)
    before = psutil.Process().memory_info().rss
    dec = generation.decoder(path)
    gen = lambda n: list(anetrain.generate(dec, PROMPT, max_tokens=n, temperature=0, stop_at_eos=False))
    gen(4)  # warm-up
    rate, out = timed(lambda: gen(tokens), tokens)
    peak = bench.peak_rss_bytes()  # before the memcpy's buffers
    memcpy, bandwidth = Memcpy(), 0.0
    for _ in range(repeats):  # a memcpy window as long as a generation, then a generation
        bandwidth = max(bandwidth, memcpy.bandwidth(seconds=tokens / rate))
        rate = max(rate, timed(lambda: gen(tokens), tokens)[0])
    return dict(tok_s=rate, tokens=out, bandwidth=bandwidth, weight_bytes=dec.weight_bytes,
                cache_bytes=dec.cache_bytes, scratch_bytes=dec.scratch_bytes, peak=peak, before=before)


def run_hf(hf_dir, tokens, threads, repeats):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor([PROMPT])

    def gen(n):
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                 pad_token_id=0)
        return out[0, len(PROMPT):].tolist()

    gen(4)  # warm-up
    rate, out = timed(lambda: gen(tokens), tokens)
    for _ in range(repeats):
        rate = max(rate, timed(lambda: gen(tokens), tokens)[0])
    return dict(tok_s=rate, tokens=out, version=f"transformers {transformers.__version__}, PyTorch {torch.__version__}")


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["stories15M", "stories110M"],
                    choices=["stories15M", "stories42M", "stories110M"])
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per timed generation (default: 32)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating anetrain/transformers process pairs per preset; each ratio is the median of "
                         "the rounds' (a VM's speed drifts over minutes: pairs see the same machine)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed generations per process after the first; the fastest counts (default: 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        job = json.loads(args.job)
        print(json.dumps((run_ours if args.worker == "anetrain" else run_hf)(**job)))
        return
    if min(args.rounds, args.tokens, args.repeats) < 1:
        raise SystemExit("--rounds, --repeats and --tokens must be at least 1")

    import anetrain

    info = anetrain.info()
    print(f"anetrain {info['version']} KV-cache decoder against transformers' LlamaForCausalLM.generate, greedy, "
          f"{args.threads} threads, prompt {len(PROMPT)} tokens, {args.tokens} new tokens, {args.rounds} rounds")
    print(f"BLAS core type: {info['blas_core']} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); "
          f"PyTorch uses its own BLAS")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            path, hf_dir = os.path.join(tmp, f"{name}.bin"), os.path.join(tmp, f"{name}-hf")
            write_model(name, path, hf_dir)
            job = dict(tokens=args.tokens, threads=args.threads, repeats=args.repeats)
            worker = lambda which, **where: bench.in_subprocess(os.path.abspath(__file__), which, {**job, **where})
            pairs = [(worker("anetrain", path=path), worker("hf", hf_dir=hf_dir)) for _ in range(args.rounds)]
            shutil.rmtree(hf_dir)
            os.unlink(path)
            speedups = sorted(o["tok_s"] / h["tok_s"] for o, h in pairs)
            bounds = sorted(o["bandwidth"] / o["weight_bytes"] / o["tok_s"] for o, _ in pairs)  # bound / ours
            ours, hf = pairs[0]
            memory = max(o["peak"] - o["before"] for o, _ in pairs)
            budget = ours["weight_bytes"] + ours["cache_bytes"]
            same = first_difference(ours["tokens"], hf["tokens"])
            mb = lambda b: f"{b / 2**20:.0f}"
            print(f"\n{name}: anetrain {statistics.median(o['tok_s'] for o, _ in pairs):.1f} tok/s | "
                  f"{hf['version']} {statistics.median(h['tok_s'] for _, h in pairs):.1f} tok/s | "
                  f"speedup {statistics.median(speedups):.2f} (rounds: {', '.join(f'{r:.2f}' for r in speedups)})")
            bw = statistics.median(o["bandwidth"] for o, _ in pairs)
            print(f"  bandwidth bound: memcpy {bw / 1e9:.1f} GB/s over {mb(ours['weight_bytes'])} MB of fp32 weights "
                  f"per token = {bw / ours['weight_bytes']:.1f} tok/s; anetrain at {statistics.median(bounds):.2f}x "
                  f"of its time (rounds: {', '.join(f'{r:.2f}' for r in bounds)})")
            print(f"  decode memory: {mb(memory)} MB peak above the start, against weights {mb(ours['weight_bytes'])}"
                  f" + KV cache {mb(ours['cache_bytes'])} MB: {memory / budget:.3f}x (scratch "
                  f"{ours['scratch_bytes'] / 2**10:.0f} KiB)")
            print(f"  greedy tokens: {'the same' if same is None else f'first difference at token {same}'}")
            rows.append((name, statistics.median(speedups), statistics.median(bounds), memory / budget))
    print("\ntargets: speedup > 1 on every shape; stories110M within 1.2x of the bandwidth bound; "
          "decode memory <= 1.10x (weights + KV cache)")
    for name, speedup, bound, memory in rows:
        ok = speedup > 1 and memory <= 1.10 and (name != "stories110M" or bound <= 1.2)
        print(f"  {name}: speedup {speedup:.2f}, bound {bound:.2f}x, memory {memory:.3f}x -> "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
