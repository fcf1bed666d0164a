#!/usr/bin/env python
"""The model's kernels as a pipeline, on a backend: three parts, one JSON.

1. stack: an N-layer stack (default 24) of one model kernel (default ffn_forward), each layer
   with weights of its own, the first output of each layer fed to the next one's first input.
   Timed end to end (--evals passes, min / median / max) and per layer (every evaluation).
   The end-to-end time over the sum of the per-layer evaluations is what chaining costs.
2. seq: the model's four per-layer kernels (attention and FFN, forward and backward) at
   sequence lengths 128-1024: evaluation latency and FLOP/s (from exactly 2*M*N*K per product,
   anetrain.bench.KERNEL_PRODUCTS), inputs made by the kernels before them (causal
   probabilities where the backward kernel takes them).
3. step: the training step of a preset and pipeline: time and share per component (the
   trainer's Timings), sustained TFLOP/s, compile time per weight update (static: every update
   recompiles; on the ANE a restart every budget/(4 x layers) updates) or once (dynamic), and
   the step's GEMMs alone timed in turns with it, per component (anetrain.bench.step_gemms and
   by_component; step / GEMM-only is the overhead ratio scripts/bench_train.py reports, and
   each component's time beyond its own products says where the rest goes).

Programs: --programs auto runs what the trainer runs on the backend (split programs on ref,
ANE-shaped ones on the ANE); ane-shaped or split force one. FLOP/s above the stated peak (the
BLAS peak measured in this run on ref, the chip's recorded peak on the ANE) or times <= 0 are
flagged and left out of the records.

    python scripts/bench_pipeline.py                         # Stories110M, a few minutes on 2 cores
    python scripts/bench_pipeline.py --preset stories15M --parts step --pipeline static
    python scripts/bench_pipeline.py --quick --plot          # seconds
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import anetrain.kernels as K  # noqa: E402
from anetrain import ane, bench, fp16  # noqa: E402
from anetrain.config import PRESETS, model_preset  # noqa: E402
from anetrain.errors import UsageError, exit_on_error  # noqa: E402
from anetrain.model import Model  # noqa: E402

KERNELS = ("attention_forward", "ffn_forward", "ffn_backward", "attention_backward")
SEQS = (128, 256, 512, 1024)
PARTS = ("stack", "seq", "step")


class LayerKernel:
    """One of the model's per-layer kernels, compiled, with inputs filled from named tensors
    ([C, S] activations, [out, in] weights) and its results read back by name."""

    def __init__(self, config, name, pipeline, ane_shaped, backend, weights=None, label=""):
        self.name, self.ane_shaped = name, ane_shaped
        self.probs_tap = not ane_shaped  # split programs hand attention_backward the probabilities
        if ane_shaped:
            progs = ane.programs(config, pipeline, layer_weights=weights)
        else:
            progs = K.model_kernels(config, pipeline, layer_weights=weights, probs_tap=self.probs_tap,
                                    dialect="1.3/ios18")
        _, text, blobs, ins, outs = next(p for p in progs if p[0] == name)
        t = time.perf_counter()
        self.kernel = K.compile(text, weights=blobs, backend=backend, name=label or name)
        self.compile_ms = 1e3 * (time.perf_counter() - t)
        self.input_names, self.output_names = ins, outs
        self.inputs = [np.zeros(i.shape, np.float16) for i in self.kernel.inputs]
        self.outputs = [np.zeros(o.shape, np.float16) for o in self.kernel.outputs]

    def fill(self, tensors):
        """Write every input from ``tensors`` (name -> float32 array); for ANE-shaped programs,
        into its block of the one packed input."""
        if self.ane_shaped:
            x = self.inputs[0][0, :, 0, :]
            for name, c0, col, rows, cols in self.input_names:
                x[c0:c0 + rows, col:col + cols] = fp16.to_half(_as2d(tensors[name], rows, cols))
        else:
            for arr, name in zip(self.inputs, self.input_names):
                arr[...] = fp16.to_half(np.ascontiguousarray(tensors[name], np.float32)).reshape(arr.shape)

    def results(self):
        """The outputs by name, as float32 arrays ([C, S]; probs as the kernel shapes it)."""
        if self.ane_shaped:
            y = self.outputs[0][0, :, 0, :]
            return {name: y[c0:c0 + rows, col:col + cols].astype(np.float32)
                    for name, c0, col, rows, cols in self.output_names}
        out = {}
        for arr, name in zip(self.outputs, self.output_names):
            out[name] = arr.astype(np.float32)
        return out

    def __call__(self):
        self.kernel.eval_into(self.inputs, self.outputs)


def _as2d(a, rows, cols):
    return np.ascontiguousarray(np.asarray(a, np.float32).reshape(rows, cols))


def random_tensors(c, rng):
    """Activations [C, S] and one layer's weights [out, in] (std 1/sqrt(in)), float32."""
    S, D = c.seq_len, c.dim
    t = {n: rng.standard_normal((D, S)).astype(np.float32) for n in ("xn", "x2n", "df", "dout")}
    t.update(random_weights(c, rng))
    return t


def random_weights(c, rng):
    D, H, QD, KD = c.dim, c.hidden_dim, c.q_dim, c.kv_dim
    shapes = dict(wq=(QD, D), wk=(KD, D), wv=(KD, D), wo=(D, QD), w1=(H, D), w3=(H, D), w2=(D, H))
    return {n: (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for n, s in shapes.items()}


def _ane_shaped(args):
    if args.programs == "auto":
        return args.backend == "ane"
    return args.programs == "ane-shaped"


# ------------------------------------------------------------------ 1. the stack

def stack(args, cfg, peak):
    rng = np.random.default_rng(0)
    shaped = _ane_shaped(args)
    base = random_tensors(cfg, rng)
    layers = []
    static = args.pipeline == "static"
    shared = None if static else LayerKernel(cfg, args.kernel, "dynamic", shaped, args.backend)
    compile_ms = 0.0 if static else shared.compile_ms
    for layer in range(args.layers):
        w = random_weights(cfg, rng)
        if static:
            k = LayerKernel(cfg, args.kernel, "static", shaped, args.backend, weights=w, label=f"{args.kernel}[{layer}]")
            compile_ms += k.compile_ms
        else:
            k = shared
        layers.append((k, dict(base, **w)))
    first_in = _first_activation(layers[0][0])
    # per layer: its own input buffers (the dynamic pipeline's weights staged in them once)
    buffers = []
    for k, tensors in layers:
        k.fill(tensors)
        buffers.append([a.copy() for a in k.inputs])
    per_layer, ends = [], []

    def run_once():
        prev = None
        for (k, _), ins in zip(layers, buffers):
            if prev is not None:
                _write_first_activation(k, ins, prev, first_in)
            k.inputs = ins
            t = time.perf_counter()
            k()
            per_layer.append(time.perf_counter() - t)
            prev = k.outputs[0]

    run_once()  # warm-up
    per_layer.clear()
    for _ in range(args.evals):
        t = time.perf_counter()
        run_once()
        ends.append(time.perf_counter() - t)
        if peak:
            peak.sample()
    flops = bench.kernel_flops(cfg, args.kernel, recomputes_probs=shaped)
    sums = [sum(per_layer[i * args.layers:(i + 1) * args.layers]) for i in range(args.evals)]
    r = dict(kernel=args.kernel, layers=args.layers, pipeline=args.pipeline, ane_shaped=shaped, seq=cfg.seq_len,
             flops=flops * args.layers, compile_ms=compile_ms, end_to_end=bench.summary(ends),
             per_layer=bench.summary(per_layer), chaining=bench.ratio_summary(ends, sums), seconds=ends)
    r["tflops"] = r["flops"] / r["end_to_end"]["median"] / 1e12
    return r


def _first_activation(k):
    """(name, channels) of the kernel's first input activation."""
    if k.ane_shaped:
        name, _, _, rows, _ = k.input_names[0]
        return name, rows
    return k.input_names[0], k.kernel.inputs[0].shape[1]


def _write_first_activation(k, ins, prev_out, first):
    """The previous layer's first result [C, S] into this layer's first input (fp16 to fp16)."""
    _, rows = first
    S = prev_out.shape[-1]
    src = prev_out.reshape(-1, S)[:rows] if k.ane_shaped else prev_out.reshape(-1)[:rows * S].reshape(rows, S)
    if k.ane_shaped:
        ins[0][0, :rows, 0, :S] = src
    else:
        ins[0].reshape(rows, S)[...] = src


# ------------------------------------------------------------------ 2. the sequence sweep

def seq_sweep(args, peak):
    from tqdm import tqdm

    shaped = _ane_shaped(args)
    rows = []
    for seq in tqdm(args.seqs, desc="seq sweep", unit="seq", disable=None, leave=False):
        cfg = model_preset(args.preset)
        cfg.seq_len = seq
        rng = np.random.default_rng(seq)
        tensors = random_tensors(cfg, rng)
        ks = {}
        for name in KERNELS:  # in order: each kernel's inputs come from the ones before it
            w = _weights_only(tensors) if args.pipeline == "static" else None
            k = LayerKernel(cfg, name, args.pipeline, shaped, args.backend, weights=w)
            k.fill(tensors)
            k()
            tensors.update(k.results())  # q, k, v (and probs) for attention_backward, h1, h3 for ffn_backward
            ks[name] = k
        samples = bench.alternate([ks[n] for n in KERNELS], args.evals, warmup=1)
        if peak:
            peak.sample()
        for name, s in zip(KERNELS, samples):
            flops = bench.kernel_flops(cfg, name, recomputes_probs=shaped)
            r = dict(kernel=name, seq=seq, flops=flops, compile_ms=ks[name].compile_ms, eval=bench.summary(s),
                     seconds=s)
            r["gflops"] = flops / r["eval"]["median"] / 1e9
            rows.append(r)
    return rows


def _weights_only(t):
    return {n: t[n] for n in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}


# ------------------------------------------------------------------ 3. the step

def step_breakdown(args, peak):
    cfg = model_preset(args.preset)
    cfg.seq_len = args.seq
    model = Model(cfg, backend=args.backend, pipeline=args.pipeline, seed=1,
                  ane_shaped=None if args.programs == "auto" else _ane_shaped(args))
    step = bench.TrainingStep(model, args.batch)
    timings = step.timings
    step()
    first = timings[0]
    gemms = bench.step_gemms(cfg, args.batch)
    groups = bench.by_component(gemms)
    runners = [bench.GemmRunner(g) for g in groups.values()]
    fns = [step] + runners + ([peak.sample] if peak else [])
    samples = bench.alternate(fns, args.steps, warmup=0)
    step_s = samples[0]
    gemm_s = [sum(s[i] for s in samples[1:1 + len(runners)]) for i in range(args.steps)]
    rest = timings[1:]
    parts = [k for k in first if k.endswith("_ms") and k != "total_ms"]
    med = {k: float(np.median([t[k] for t in rest])) for k in parts + ["total_ms"]}
    flops = bench.total_flops(gemms)
    components = {k[:-3]: dict(ms=med[k], share=med[k] / med["total_ms"]) for k in parts}
    for (name, _), s in zip(groups.items(), samples[1:]):
        components[name]["gemm_only_ms"] = 1e3 * float(np.median(s))
    r = dict(preset=args.preset, seq=args.seq, batch=args.batch, pipeline=args.pipeline, ane_shaped=model.ane_shaped,
             flops=flops, step=bench.summary(step_s), gemm_only=bench.summary(gemm_s),
             overhead=bench.ratio_summary(step_s, gemm_s), seconds=step_s, components=components,
             compiles_per_step=float(np.median([t["compiles"] for t in rest])),
             first_step_compile_ms=first["compile_ms"])
    r["tflops"] = flops / r["step"]["median"] / 1e12
    if args.pipeline == "static":
        r["compile"] = dict(ms=med["compile_ms"], when="every weight update (a restart on the ANE when the budget is spent)")
    else:
        r["compile"] = dict(ms=first["compile_ms"], when="once, at the first step")
    return r


# ------------------------------------------------------------------ output

def print_results(out):
    if "stack" in out:
        for r in out["stack"]:
            e, p = r["end_to_end"], r["per_layer"]
            print(f"\nstack: {r['layers']} x {r['kernel']} ({r['pipeline']}, "
                  f"{'ANE-shaped' if r['ane_shaped'] else 'split'}, S={r['seq']}): end to end "
                  f"{1e3 * e['median']:.2f} ms (min {1e3 * e['min']:.2f}, max {1e3 * e['max']:.2f}), "
                  f"{r['tflops']:.3f} TFLOP/s; per layer {1e3 * p['median']:.3f} ms (min {1e3 * p['min']:.3f}, "
                  f"max {1e3 * p['max']:.3f}); end to end / sum of layers {r['chaining']['median']:.3f}; "
                  f"compile {r['compile_ms']:.0f} ms")
    if out.get("seq"):
        print("\nsequence sweep:")
        print(bench.table([dict(kernel=r["kernel"], seq=r["seq"], gflop=r["flops"] / 1e9, compile=r["compile_ms"],
                                min=1e3 * r["eval"]["min"], median=1e3 * r["eval"]["median"],
                                max=1e3 * r["eval"]["max"], gflops=r["gflops"]) for r in out["seq"]],
                          [("kernel", "kernel", "<18s"), ("S", "seq", "d"), ("GFLOP", "gflop", ".3f"),
                           ("compile ms", "compile", ".1f"), ("min ms", "min", ".3f"), ("median ms", "median", ".3f"),
                           ("max ms", "max", ".3f"), ("GFLOP/s", "gflops", ".1f")]))
    for r in out.get("step", []):
        s = r["step"]
        print(f"\nstep: {r['preset']} {r['pipeline']} ({'ANE-shaped' if r['ane_shaped'] else 'split'}), seq {r['seq']}, "
              f"batch {r['batch']}: {1e3 * s['median']:.0f} ms (min {1e3 * s['min']:.0f}, max {1e3 * s['max']:.0f}), "
              f"{r['tflops']:.3f} TFLOP/s sustained; GEMM-only {1e3 * r['gemm_only']['median']:.0f} ms, overhead "
              f"ratio {r['overhead']['median']:.3f}; compile {r['compile']['ms']:.0f} ms {r['compile']['when']}")
        print(bench.table([dict(part=k, ms=v["ms"], share=100 * v["share"], gemm=v.get("gemm_only_ms"),
                                over=v["ms"] - v["gemm_only_ms"] if "gemm_only_ms" in v else None)
                           for k, v in r["components"].items()],
                          [("component", "part", "<10s"), ("ms/step", "ms", ".1f"), ("share %", "share", ".1f"),
                           ("its GEMMs alone ms", "gemm", ".1f"), ("beyond them ms", "over", ".1f")]))
        print("(kernels' products run inside the kernels, whose fp16 I/O is the io row)")
    peak = out["peak"]
    print(f"\nstated peak: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak['source']})" if peak["flops"]
          else f"\nno stated peak ({peak['source']}): only times <= 0 are flagged")
    for r in out["flagged"]:
        print(f"FLAGGED, not a record: {r['part']} {r.get('kernel') or r.get('preset')}: {r['flag']}")


def plot(out, prefix):
    paths = []
    if out.get("seq"):
        lat, gf = {}, {}
        for r in out["seq"]:
            lat.setdefault(r["kernel"], []).append((r["seq"], 1e3 * r["eval"]["median"]))
            gf.setdefault(r["kernel"], []).append((r["seq"], r["gflops"]))
        paths.append(bench.plot_series(prefix + "_seq_latency.png", "Model kernels: latency (median)",
                                       "sequence length", "ms", lat))
        paths.append(bench.plot_series(prefix + "_seq_gflops.png", "Model kernels: throughput (from the median)",
                                       "sequence length", "GFLOP/s", gf, logy=False))
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="stories110M", choices=sorted(PRESETS))
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--backend", default="ref", choices=["ref", "ane"])
    ap.add_argument("--pipeline", default="dynamic", choices=["static", "dynamic"])
    ap.add_argument("--programs", default="auto", choices=["auto", "ane-shaped", "split"],
                    help="auto: what the trainer runs on the backend (split on ref, ANE-shaped on the ANE)")
    ap.add_argument("--kernel", default="ffn_forward", choices=KERNELS, help="the stack's kernel")
    ap.add_argument("--layers", type=int, default=24, help="the stack's depth")
    ap.add_argument("--seq", type=int, default=256, help="sequence length of the stack and the step")
    ap.add_argument("--seqs", type=int, nargs="+", default=list(SEQS), help="the sequence sweep's lengths")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument("--evals", type=int, default=5, help="timed passes (stack) or evaluations (sweep) after warm-up")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--quick", action="store_true", help="seconds: preset tiny, 4 layers, seqs 64 128, 2 evals/steps")
    ap.add_argument("--json", default=os.path.join("bench_results", "bench_pipeline.json"))
    ap.add_argument("--plot", action="store_true", help="also write PNG charts beside the JSON")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.layers, args.seq, args.seqs, args.evals, args.steps = "tiny", 4, 64, [64, 128], 2, 2
    if min(args.layers, args.evals, args.steps, args.batch) < 1:
        raise UsageError("--layers, --evals, --steps and --batch must be at least 1")
    shaped = _ane_shaped(args)
    for s in [args.seq] + list(args.seqs):
        if s < 32 or (shaped and s % 32):
            raise UsageError(f"sequence length {s}: use a multiple of 32 (the ANE's 64-byte rows), at least 32")
    if args.backend == "ane" and not ane.available():
        raise UsageError(f"the ANE is not available here ({ane.unavailable_reason()}); use --backend ref")

    machine = bench.machine_record(args.backend)
    print(bench.describe_machine(machine))
    print(f"preset {args.preset}, pipeline {args.pipeline}, programs {'ANE-shaped' if shaped else 'split'}")
    peak = bench.BlasPeak() if args.backend == "ref" else None
    if peak:
        peak.sample(2)
    out = {}
    cfg = model_preset(args.preset)
    cfg.seq_len = args.seq
    if "stack" in args.parts:
        out["stack"] = [stack(args, cfg, peak)]
    if "seq" in args.parts:
        out["seq"] = seq_sweep(args, peak)
    if "step" in args.parts:
        out["step"] = [step_breakdown(args, peak)]
    out["peak"] = bench.stated_peak("ref", peak.sample(2)) if peak else bench.stated_peak(args.backend)
    flagged = []
    for part in PARTS:
        if part in out:
            kept, bad = bench.screen(out[part], out["peak"]["flops"])
            out[part] = [{k: v for k, v in r.items() if k != "seconds"} for r in kept]
            flagged += [dict({k: v for k, v in r.items() if k != "seconds"}, part=part) for r in bad]
    out["flagged"] = flagged
    print_results(out)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    path = bench.write_json(args.json, dict(suite="bench_pipeline", machine=machine, settings=settings, **out))
    print(f"\nJSON: {path}")
    if args.plot:
        for p in plot(out, os.path.splitext(path)[0]):
            print(f"plot: {p}")


if __name__ == "__main__":
    exit_on_error(main)
