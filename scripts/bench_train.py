#!/usr/bin/env python3
"""Training step speed against two references measured in the same run: the PyTorch reference
step, and the step's own GEMMs alone (its physical limit on this CPU).

Both steps train llama2.c's Transformer (anetrain/torch_reference.py is the PyTorch model the
tests use) on the same config, batch, tokens and thread count: forward, backward, gradient
clipping and AdamW. Each preset runs --rounds alternating pairs of processes (ours, then
PyTorch's); the ratio to PyTorch is the median of the pairs' ratios.

Inside our process the step alternates with its GEMMs alone: every matrix product of the
step's forward and backward pass (anetrain.bench.step_gemms: the same shapes, through the same
BLAS shim on the same threads, each with operands of its own). step / GEMM-only is the overhead
ratio: everything the step does beyond its products (element-wise work, fp16 rounding, copies,
AdamW, waiting). It is the number that does not move with a shared machine's speed.

    python scripts/bench_train.py                         # Stories15M and Stories110M, seq 256
    python scripts/bench_train.py --presets stories110M --rounds 3
    python scripts/bench_train.py --quick                 # seconds: a smoke run
    python scripts/bench_train.py --no-torch              # the overhead ratio only

Targets: ratio to PyTorch <= 0.6 with peak memory no worse than PyTorch's (issue 4); overhead
ratio <= 1.15 for Stories110M on the ref backend (issue 18).
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's anetrain, in the worker subprocesses too
import numpy as np  # noqa: E402

from anetrain import bench, set_num_threads  # noqa: E402
from anetrain.config import PRESETS, model_preset, native_model_config  # noqa: E402
from anetrain.errors import UsageError, exit_on_error  # noqa: E402
from anetrain.model import Model  # noqa: E402

OVERHEAD_TARGET = 1.15
TORCH_TARGET = 0.6


def peak_rss_mb():
    return bench.peak_rss_bytes() / 2**20


def step_config(preset, seq):
    c = model_preset(preset)
    c.seq_len = seq
    return c


def run_anetrain(preset, seq, batch, steps, threads, pipeline):
    """ms/step and its breakdown, peak memory of the step, and the step alternating with its
    GEMMs alone (built after the peak is read, so their buffers do not count as the step's)."""
    set_num_threads(threads)
    cfg = step_config(preset, seq)
    model = Model(cfg, backend="ref", pipeline=pipeline, seed=1)
    step = bench.TrainingStep(model, batch)
    parts = step.timings
    step()  # compiles and warms up
    peak_mb = peak_rss_mb()
    gemms = bench.step_gemms(cfg, batch)
    gemm_only = bench.GemmRunner(gemms)
    blas = bench.BlasPeak()
    step_s, gemm_s, _ = bench.alternate([step, gemm_only, lambda: blas.sample(2)], steps)
    breakdown = {k: float(np.median([p[k] for p in parts[1:]])) for k in parts[0] if k.endswith("_ms")}
    return dict(step_s=step_s, gemm_s=gemm_s, parts=breakdown, peak_mb=peak_mb, flops=bench.total_flops(gemms),
                blas_peak=blas.flops)


def run_torch(preset, seq, batch, steps, threads):
    import torch

    from anetrain import torch_reference

    torch.set_num_threads(threads)
    cfg = step_config(preset, seq)
    # PyTorch's own initial weights: the step's time and memory do not depend on their values, and
    # copying ours in would add our trainer's state to this process's peak
    model = torch_reference.Transformer(native_model_config(cfg))
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
    return dict(step_s=times[1:], peak_mb=peak_rss_mb(), version=torch.__version__)


def in_subprocess(which, job):
    """Each measurement in a fresh process, so peak memory is its own."""
    return bench.in_subprocess(os.path.abspath(__file__), which, job)


def measure(name, args, progress):
    common = dict(preset=name, seq=args.seq, batch=args.batch, steps=args.steps, threads=args.threads)
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(in_subprocess("anetrain", dict(common, pipeline=args.pipeline)))
        progress()
        if not args.no_torch:
            theirs.append(in_subprocess("torch", common))
            progress()
    step_s = [t for o in ours for t in o["step_s"]]
    gemm_s = [t for o in ours for t in o["gemm_s"]]
    peak_flops = max(o["blas_peak"] for o in ours)
    flops = ours[0]["flops"]
    r = dict(preset=name, seq=args.seq, batch=args.batch, pipeline=args.pipeline, step_flops=flops,
             step=bench.summary(step_s), gemm_only=bench.summary(gemm_s), blas_peak_flops=peak_flops,
             overhead=bench.ratio_summary(step_s, gemm_s),
             # per round: the median over its pairs, so one disturbed pair moves nothing
             overhead_rounds=[bench.ratio_summary(o["step_s"], o["gemm_s"])["median"] for o in ours],
             breakdown_ms=ours[len(ours) // 2]["parts"], peak_mb=max(o["peak_mb"] for o in ours))
    r["tflops"] = flops / r["step"]["median"] / 1e12
    r["gemm_tflops"] = flops / r["gemm_only"]["median"] / 1e12
    # a record only when possible: positive times, and GEMM FLOP/s within the BLAS peak of this run
    r["flag"] = bench.impossible(step_s + gemm_s, flops, peak_flops)
    if theirs:
        torch_s = [statistics.median(t["step_s"]) for t in theirs]
        ours_s = [statistics.median(o["step_s"]) for o in ours]
        r["torch"] = dict(version=theirs[0]["version"], step=bench.summary([t for x in theirs for t in x["step_s"]]),
                          peak_mb=max(t["peak_mb"] for t in theirs))
        r["torch_ratio"] = bench.ratio_summary(ours_s, torch_s)
        r["torch_ratio_rounds"] = sorted(a / b for a, b in zip(ours_s, torch_s))
    return r


def report(r):
    tok = r["batch"] * r["seq"]
    ms, gms = 1000 * r["step"]["median"], 1000 * r["gemm_only"]["median"]
    ov = r["overhead"]
    print(f"\n{r['preset']}: anetrain {ms:.0f} ms/step ({tok / ms * 1000:.0f} tok/s, {r['tflops']:.3f} TFLOP/s, "
          f"peak {r['peak_mb']:.0f} MB; steps min {1000 * r['step']['min']:.0f} max {1000 * r['step']['max']:.0f})")
    print(f"  GEMM-only {gms:.0f} ms ({r['step_flops'] / 1e9:.1f} GFLOP, {r['gemm_tflops']:.3f} TFLOP/s; BLAS peak this "
          f"run {r['blas_peak_flops'] / 1e12:.3f} TFLOP/s) | overhead ratio {ov['median']:.3f} "
          f"(min {ov['min']:.3f}, max {ov['max']:.3f}; round medians: "
          f"{', '.join(f'{x:.3f}' for x in sorted(r['overhead_rounds']))})")
    if "torch" in r:
        t = r["torch"]
        tms = 1000 * t["step"]["median"]
        print(f"  PyTorch {t['version']} {tms:.0f} ms/step ({tok / tms * 1000:.0f} tok/s, peak {t['peak_mb']:.0f} MB) | "
              f"ratio {r['torch_ratio']['median']:.2f} (rounds: {', '.join(f'{x:.2f}' for x in r['torch_ratio_rounds'])})")
    print("  anetrain breakdown (ms/step): " + ", ".join(f"{k[:-3]} {v:.0f}" for k, v in r["breakdown_ms"].items()))
    need = step_config(r["preset"], r["seq"]).training_memory(rounded_weights=r["pipeline"] == "dynamic")
    print("  anetrain memory model (MB): " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in need.items())
          + f", total {sum(need.values()) / 2**20:.0f}")
    if r["flag"]:
        print(f"  FLAGGED, not a record: {r['flag']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["stories15M", "stories110M"], choices=sorted(PRESETS))
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument("--steps", type=int, default=5,
                    help="timed steps per process after one warm-up, each followed by a GEMM-only pass")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating anetrain/PyTorch process pairs per preset; the ratio is the median of the "
                         "rounds' ratios (a VM's speed drifts over minutes: pairs see the same machine)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (BLAS and our loops)")
    ap.add_argument("--pipeline", default="dynamic", choices=["static", "dynamic"])
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch (the overhead ratio only)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run in seconds: preset tiny, seq 32, 2 steps, 1 round (figures mean nothing)")
    ap.add_argument("--json", default=os.path.join("bench_results", "bench_train.json"), help="where to write the JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        job = json.loads(args.job)
        fn = run_anetrain if args.worker == "anetrain" else run_torch
        print(json.dumps(fn(**job)))
        return
    if args.quick:
        args.presets, args.seq, args.steps, args.rounds = ["tiny"], 32, 2, 1
    if args.rounds < 1 or args.steps < 1:
        raise UsageError("--rounds and --steps must be at least 1")
    if args.seq < 1 or args.batch < 1 or args.threads < 1:
        raise UsageError("--seq, --batch and --threads must be at least 1")
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UsageError("PyTorch is not installed; install it (pip install torch) or pass --no-torch") from None

    machine = bench.machine_record("ref")
    print(bench.describe_machine(machine))
    print(f"pipeline={args.pipeline}, {args.threads} threads, seq {args.seq}, batch {args.batch}, "
          f"{args.rounds} rounds of {args.steps} steps; PyTorch uses its own BLAS")
    from tqdm import tqdm

    per_preset = args.rounds * (1 if args.no_torch else 2)
    results = []
    with tqdm(total=per_preset * len(args.presets), desc="processes", unit="run", disable=None, leave=False) as bar:
        for name in args.presets:
            results.append(measure(name, args, bar.update))
    for r in results:
        report(r)
    print(f"\ntargets: overhead ratio <= {OVERHEAD_TARGET} (Stories110M), ratio to PyTorch <= {TORCH_TARGET} "
          "with peak memory <= PyTorch's")
    for r in results:
        line = f"  {r['preset']}: overhead {r['overhead']['median']:.3f}"
        if r["preset"] == "stories110M":
            line += f" -> {'met' if r['overhead']['median'] <= OVERHEAD_TARGET else 'NOT met'}"
        if "torch" in r:
            ok = r["torch_ratio"]["median"] <= TORCH_TARGET and r["peak_mb"] <= r["torch"]["peak_mb"]
            line += (f"; ratio {r['torch_ratio']['median']:.2f}, memory {r['peak_mb']:.0f}/{r['torch']['peak_mb']:.0f} MB"
                     f" -> {'met' if ok else 'NOT met'}")
        print(line)
    records = [r for r in results if not r["flag"]]
    path = bench.write_json(args.json, dict(suite="bench_train", machine=machine, settings=vars(args),
                                            results=records, flagged=[r for r in results if r["flag"]]))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    exit_on_error(main)
