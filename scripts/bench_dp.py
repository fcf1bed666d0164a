#!/usr/bin/env python3
"""Data-parallel speed on this machine, and what it would take across machines.

Runs scripts/train.py itself, the same step count and global batch each time, on the ref backend:

- 1 process with all of this machine's cores, one batch of 2 x --batch-size sequences per step
  (the reference), and the same with 1 thread (how well one process's threads scale here);
- 2 ranks under torchrun, --batch-size sequences each and half the cores each, with the
  gradients all-reduced once after the backward pass (--allreduce after), and per layer while
  the backward pass goes on (--allreduce overlap).

It prints tokens/s of each and its ratio to the 1-process figure (the median over --rounds
rounds of all four, so all see the same machine), rank 0's all-reduce time per step (time with a
reduction in flight, waiting for the slower rank included) and the share of it hidden behind the
backward pass. Then the traffic of a step across machines: a ring all-reduce sends and receives
2 (W - 1) / W times the gradient bytes per rank, and the time that takes at 1 and 10 Gbit/s,
against this run's compute per step.

    python scripts/bench_dp.py                                  # tiny preset, seq 128, 4 sequences per rank
    python scripts/bench_dp.py --preset stories15M --seq-len 256 --batch-size 1 --steps 8
Needs PyTorch (the distributed extra).
"""
import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from anetrain import config, distributed, info  # noqa: E402

TRAIN = os.path.join(ROOT, "scripts", "train.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name, args, batch, ranks, threads, out_dir, extra=()):
    """Median ms per step, tokens per step and rank 0's all-reduce figures of one training run."""
    out = os.path.join(out_dir, name)
    cmd = [TRAIN, *args, "--batch-size", str(batch), "--out", out, *extra]
    if ranks > 1:
        cmd = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", str(free_port()), *cmd]
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_ENV}
    env.update(OMP_NUM_THREADS="1")
    if ranks == 1:
        env["ANETRAIN_NUM_THREADS"] = str(threads)  # (ranks set theirs: cores // ranks on the machine)
    p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        print(f"error: the {name} run failed (its output follows)\n{p.stderr[-3000:]}", file=sys.stderr)
        sys.exit(1)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "loss" in r]
    shutil.rmtree(out)
    timed = steps[2:] or steps  # the first steps compile and warm up
    res = {"ms": statistics.median(r["step_ms"] for r in timed), "tokens": timed[0]["tokens"]}
    if "allreduce_ms" in timed[0]:
        res["allreduce_ms"] = statistics.median(r["allreduce_ms"] for r in timed)
        res["exposed_ms"] = statistics.median(r["ms"]["allreduce"] for r in timed)
        res["hidden"] = statistics.median(r["allreduce_hidden"] for r in timed)
    return res


def usage_error(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def link_lines(n_params, world, compute_ms=None):
    """Ring all-reduce traffic per rank and step, and its time at 1 and 10 Gbit/s."""
    nbytes = 2 * (world - 1) / world * 4 * n_params
    lines = []
    for gbit in (1, 10):
        ms = nbytes * 8 / (gbit * 1e9) * 1e3
        vs = f" ({ms / compute_ms:.2f}x the compute of a step here)" if compute_ms else ""
        lines.append(f"{gbit:>3} Gbit/s: {ms:8.1f} ms per step{vs}")
    return nbytes, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=list(config.PRESETS))
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per rank per step (1 process: twice that)")
    ap.add_argument("--steps", type=int, default=12, help="steps per run; the first 2 are not timed")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the four runs; medians are reported")
    ap.add_argument("--pipeline", default="dynamic", choices=list(config.PIPELINES))
    a = ap.parse_args()
    if a.steps < 3 or a.rounds < 1 or a.batch_size < 1:
        usage_error("--steps must be at least 3, --rounds and --batch-size at least 1")
    if importlib.util.find_spec("torch") is None:
        usage_error("bench_dp.py launches torchrun, which needs PyTorch; pip install 'anetrain[distributed]'")
    from tqdm import tqdm

    cores = distributed.cores()
    model = config.model_preset(a.preset)
    model.seq_len = a.seq_len
    args = ["--preset", a.preset, "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--pipeline", a.pipeline,
            "--backend", "ref", "--eval-interval", "0", "--sample-interval", "0", "--sync-check", "0"]
    if a.preset != "tiny":  # the shipped corpus has the tiny preset's vocabulary; speed does not depend on the text
        args += ["--vocab-size", str(config.PRESETS["tiny"]["vocab_size"])]
        model.vocab_size = config.PRESETS["tiny"]["vocab_size"]
    i = info()
    print(f"anetrain {i['version']}, ref backend, {a.pipeline} pipeline, {a.preset} (vocab {model.vocab_size}, "
          f"{model.n_params() / 1e6:.2f}M params), seq {a.seq_len}, {2 * a.batch_size} sequences per step, "
          f"{cores} cores")
    print(f"BLAS core type: {i['blas_core']} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    # (name, sequences per rank, ranks, threads of a single process, extra flags)
    configs = [("1 process", 2 * a.batch_size, 1, cores, ()),
               ("1 process, 1 thread", 2 * a.batch_size, 1, 1, ()),
               ("2 ranks, after", a.batch_size, 2, None, ("--allreduce", "after")),
               ("2 ranks, overlap", a.batch_size, 2, None, ("--allreduce", "overlap"))]
    results = {name: [] for name, *_ in configs}
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=a.rounds * len(configs), unit="run") as bar:
        for _ in range(a.rounds):
            for name, batch, ranks, threads, extra in configs:
                results[name].append(run(name.replace(" ", "-").replace(",", ""), args, batch, ranks, threads, tmp,
                                         extra))
                bar.update(1)
    base = statistics.median(r["ms"] for r in results["1 process"])
    print(f"\n{'':20} {'ms/step':>8} {'tok/s':>8} {'vs 1 process':>12} {'all-reduce':>11} {'exposed':>8} {'hidden':>7}")
    for name, rs in results.items():
        ms = statistics.median(r["ms"] for r in rs)
        tok = rs[0]["tokens"] / ms * 1e3
        ratio = base / ms  # the same tokens per step: the ratio of tokens/s
        line = f"{name:20} {ms:8.1f} {tok:8.0f} {ratio:11.2f}x"
        if "allreduce_ms" in rs[0]:
            line += (f" {statistics.median(r['allreduce_ms'] for r in rs):8.2f} ms"
                     f" {statistics.median(r['exposed_ms'] for r in rs):5.2f} ms"
                     f" {100 * statistics.median(r['hidden'] for r in rs):6.0f}%")
        print(line)
    print("  rounds of tok/s: " + "; ".join(
        f"{name}: " + ", ".join(f"{r['tokens'] / r['ms'] * 1e3:.0f}" for r in rs) for name, rs in results.items()))

    # across machines: each rank on its own machine computes its share with all of that machine's cores
    compute = base / 2
    print(f"\nacross machines ({model.n_params() / 1e6:.2f}M params, fp32 gradients, ring all-reduce, no overlap):")
    for world in (2, 4):
        nbytes, lines = link_lines(model.n_params(), world, compute)
        print(f"  {world} machines: {nbytes / 1e6:.1f} MB sent and received per rank per step")
        for line in lines:
            print("    " + line)
    print(f"  (compute of a step here: {compute:.1f} ms, {a.batch_size} sequence{'s' * (a.batch_size > 1)} on "
          f"{cores} cores; raise "
          f"--accum-steps to do more compute per exchange)")
    print("\nother presets, traffic per rank per step with 2 machines:")
    for name in config.PRESETS:
        n = config.model_preset(name).n_params()
        nbytes, lines = link_lines(n, 2)
        print(f"  {name:12} {n / 1e6:7.1f}M params {nbytes / 1e6:8.1f} MB | " + " | ".join(lines))


if __name__ == "__main__":
    main()
