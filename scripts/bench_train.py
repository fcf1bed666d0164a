#!/usr/bin/env python3
"""Training step speed: anetrain's native step against the PyTorch reference step, same run.

Both train llama2.c's Transformer (anetrain/torch_reference.py is the PyTorch model used by the test
suite) on the same config, batch, tokens and thread count: forward, backward, gradient clipping
and AdamW. Prints ms/step for each, the ratio (ours / PyTorch; lower is better), tokens/s, peak
memory of each measured in a fresh subprocess, and the BLAS core type. Each preset runs --rounds
alternating pairs of processes (ours, then PyTorch's) and reports the median of the pairs' ratios.

    python scripts/bench_train.py                      # stories15M and stories110M shapes, seq 256
    python scripts/bench_train.py --presets stories15M --rounds 3
    python scripts/bench_train.py --presets qwen3-0.6B --rounds 1 --steps 2   # 10.5-12 GiB each

Besides the measured peak it prints the trainer's memory model (anetrain.config's
training_memory: weights, gradients and AdamW moments; activations; logits), so the peak can be
read against what must be there.
Target (issue 4): ratio <= 0.6 on the ref backend, with peak memory no worse than PyTorch's.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's anetrain, in the worker subprocesses too
from anetrain.config import PRESETS, ModelConfig  # noqa: E402  (the shapes; seq_len comes from --seq)
from anetrain import bench  # noqa: E402
from anetrain.bench import peak_rss_bytes  # noqa: E402


def peak_rss_mb():
    return peak_rss_bytes() / 2**20


def run_anetrain(shape, seq, batch, steps, threads, pipeline):
    import numpy as np

    from anetrain import set_num_threads
    from anetrain.model import Model

    set_num_threads(threads)
    model = Model({**shape, "seq_len": seq}, backend="ref", pipeline=pipeline, seed=1)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, seq + 1)).astype(np.int32)
    times = []
    for i in range(steps + 1):  # the first step compiles and warms up
        t0 = time.perf_counter()
        model.accumulate(tokens)
        model.update(lr=1e-4, clip=1.0)
        times.append(time.perf_counter() - t0)
        if i == 0:
            model.reset_timings()
    parts = {k: v / steps for k, v in model.timings.items() if k.endswith("_ms")}
    return dict(ms=1000 * sorted(times[1:])[len(times[1:]) // 2], parts=parts, peak_mb=peak_rss_mb())


def run_torch(shape, seq, batch, steps, threads):
    import numpy as np
    import torch

    from anetrain import torch_reference
    from anetrain.config import native_model_config

    torch.set_num_threads(threads)
    # PyTorch's own initial weights: the step's time and memory do not depend on their values, and
    # copying ours in would add our trainer's state to this process's peak
    cfg = native_model_config({**shape, "seq_len": seq})
    model = torch_reference.Transformer(cfg)
    opt = torch_reference.adamw(model, lr=1e-4)
    params = list(model.weights().values())
    tokens = torch.tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1)))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss = model(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return dict(ms=1000 * sorted(times[1:])[len(times[1:]) // 2], peak_mb=peak_rss_mb(), version=torch.__version__)


def in_subprocess(which, args):
    """Each measurement in a fresh process, so peak memory is its own."""
    return bench.in_subprocess(os.path.abspath(__file__), which, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["stories15M", "stories110M"], choices=sorted(PRESETS))
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported) after one warm-up")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating anetrain/PyTorch process pairs per preset; the ratio is the median of the "
                         "rounds' ratios (a VM's speed drifts over minutes: pairs see the same machine)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (BLAS and our loops)")
    ap.add_argument("--pipeline", default="dynamic", choices=["static", "dynamic"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        job = json.loads(args.job)
        fn = run_anetrain if args.worker == "anetrain" else run_torch
        print(json.dumps(fn(**job)))
        return

    import anetrain

    info = anetrain.info()
    print(f"anetrain {info['version']} ref backend, pipeline={args.pipeline}, {args.threads} threads, "
          f"seq {args.seq}, batch {args.batch}")
    print(f"BLAS core type: {info['blas_core']} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); "
          f"PyTorch uses its own BLAS")
    if args.rounds < 1 or args.steps < 1:
        raise SystemExit("--rounds and --steps must be at least 1")
    rows = []
    for name in args.presets:
        common = dict(shape=PRESETS[name], seq=args.seq, batch=args.batch, steps=args.steps, threads=args.threads)
        pairs = [(in_subprocess("anetrain", dict(common, pipeline=args.pipeline)), in_subprocess("torch", common))
                 for _ in range(args.rounds)]
        ratios = sorted(o["ms"] / r["ms"] for o, r in pairs)
        ratio = statistics.median(ratios)
        ours = pairs[len(pairs) // 2][0]  # for the breakdown
        ms = statistics.median(o["ms"] for o, _ in pairs)
        ref_ms = statistics.median(r["ms"] for _, r in pairs)
        peak = max(o["peak_mb"] for o, _ in pairs)
        ref_peak = max(r["peak_mb"] for _, r in pairs)
        rows.append((name, ratio, peak, ref_peak))
        tok = args.batch * args.seq
        print(f"\n{name}: anetrain {ms:.0f} ms/step ({tok / ms * 1000:.0f} tok/s, peak {peak:.0f} MB) | "
              f"PyTorch {pairs[0][1]['version']} {ref_ms:.0f} ms/step ({tok / ref_ms * 1000:.0f} tok/s, peak "
              f"{ref_peak:.0f} MB) | ratio {ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
        print("  anetrain breakdown (ms/step): " + ", ".join(f"{k[:-3]} {v:.0f}" for k, v in ours["parts"].items()))
        need = ModelConfig(**{**PRESETS[name], "seq_len": args.seq}).training_memory()
        print("  anetrain memory model (MB): " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in need.items())
              + f", total {sum(need.values()) / 2**20:.0f}")
    print("\ntarget: ratio <= 0.60 and peak memory <= PyTorch's")
    for name, ratio, peak, ref_peak in rows:
        ok = ratio <= 0.6 and peak <= ref_peak
        print(f"  {name}: ratio {ratio:.2f}, memory {peak:.0f}/{ref_peak:.0f} MB -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
