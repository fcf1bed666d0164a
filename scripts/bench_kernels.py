#!/usr/bin/env python
"""Kernel speed on a backend, each figure beside a reference measured in the same run.

Default: the ref backend's interpreter overhead on two shapes, each kernel against a direct
BLAS sgemm of the same FLOPs (same process, same threads):
  (a) linear as a 1x1 conv: x [1, 768, 1, 256] fp16, W [2048, 768, 1, 1] fp16 BLOBFILE
  (b) attention-style matmul: [1, 12, 256, 64] x [1, 12, 64, 256], as an fp16 program and as an
      fp32 program (no fp16 conversions: what remains is the interpreter's own overhead)
Columns: 'api' = kernel(x) through anetrain.kernels (fp16 arrays in, new fp16 array out);
'eval' = the evaluation into preallocated outputs; 'blas' = the same sgemm calls on fp32 arrays.
Target: eval/blas <= 1.10.

--sweep: linear layers y = W x, W [out, in], from 128 to 4096 wide, square (out = in) and 1:4
(out = 4 in), at sequence lengths 64-1024, both as baked-weight 1x1 convolutions and as
dynamic-weight programs in the ANE layout (one fp16 [1, C, 1, W] input holding the activation
[in, S] and the raw weights [out, in] side by side along W; docs/ane-rules.md). Per program:
compile time (load time where the backend has a separate load: the ANE), evaluation latency
(min / median / max over --evals after warm-up; the contenders take turns), FLOP/s from exactly
2*out*in*S, and for dynamic weights the time to write a new weight set (fp16 conversion and copy
into the input). On ref each product is also timed as a direct sgemm. Results faster than the
stated peak (the BLAS peak measured in this run on ref, the chip's recorded peak on the ANE) or
with a time <= 0 are flagged and left out of the records.

    python scripts/bench_kernels.py                     # the two-shape overhead check
    python scripts/bench_kernels.py --sweep             # the full sweep (a few minutes on 2 cores)
    python scripts/bench_kernels.py --sweep --max-width 1024 --seqs 64 256
    python scripts/bench_kernels.py --sweep --quick --plot
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import anetrain  # noqa: E402
import anetrain.kernels as K  # noqa: E402
from anetrain import _native, ane, bench, fp16, mil  # noqa: E402
from anetrain.errors import UsageError, exit_on_error  # noqa: E402

WIDTHS = (128, 256, 512, 1024, 2048, 4096)
SEQS = (64, 128, 256, 512, 1024)
SHAPES = {"square": 1, "1:4": 4}  # out = ratio * in


# ------------------------------------------------------------------ the two-shape overhead check

def linear_case(rng, C=768, O=2048, S=256):
    w = (rng.standard_normal((O, C)) * 0.03).astype(np.float16)
    text, blobs = linear_program("baked", C, O, S, weights=w)
    k = K.compile(text, weights=blobs, backend="ref", name="linear")
    x = rng.standard_normal((1, C, 1, S)).astype(np.float16)
    w32 = w.astype(np.float32)
    x32 = x.reshape(C, S).astype(np.float32)
    y32 = np.empty((O, S), np.float32)

    def blas():
        _native.sgemm(w32, x32, out=y32)

    return (f"conv1x1 {C}->{O} S={S}", k, [x], blas, bench.gemm_flops(O, S, C),
            lambda out: np.abs(out.reshape(O, S).astype(np.float32) - w32 @ x32).max())


def matmul_case(rng, H=12, S=256, D=64, dtype="fp16"):
    b = mil.Builder()
    q = b.input("q", dtype, [1, H, S, D])
    kk = b.input("k", dtype, [1, H, D, S])
    b.output(b.op("y", dtype, [1, H, S, S], "matmul", x=q, y=kk, transpose_x=mil.boolean(False),
                  transpose_y=mil.boolean(False)))
    k = K.compile(b.text(), backend="ref", name="matmul")
    npd = np.float16 if dtype == "fp16" else np.float32
    qa = rng.standard_normal((1, H, S, D)).astype(npd)
    ka = rng.standard_normal((1, H, D, S)).astype(npd)
    q_b, k_b = qa[0].astype(np.float32), ka[0].astype(np.float32)
    out_b = np.empty((H, S, S), np.float32)
    outs1 = [np.empty((S, S), np.float32) for _ in range(H)]

    def blas_per_head():
        for h in range(H):
            _native.sgemm(q_b[h], k_b[h], out=outs1[h])

    def blas_batched():
        _native.sgemm_batch(q_b, k_b, out=out_b)

    # the faster of two direct-BLAS strategies for the same products is the reference
    blas = min((blas_per_head, blas_batched), key=lambda f: bench.best_seconds(f, 5))
    ref = np.matmul(q_b, k_b)[None]
    return (f"matmul [1,{H},{S},{D}]x[1,{H},{D},{S}] {dtype}", k, [qa, ka], blas, H * bench.gemm_flops(S, S, D),
            lambda out: np.abs(out.astype(np.float32) - ref).max())


def overhead_check(args, machine):
    rng = np.random.default_rng(0)
    rows = []
    peak = bench.BlasPeak()
    for name, kernel, inputs, blas, flops, check in (linear_case(rng), matmul_case(rng), matmul_case(rng, dtype="fp32")):
        outs = [np.empty(o.shape, inputs[0].dtype) for o in kernel.outputs]
        outs32 = [np.empty(o.shape, np.float32) for o in kernel.outputs]
        inputs32 = [a.astype(np.float32) for a in inputs]
        peak.sample(2)
        api, ev, bl, e32 = bench.alternate(
            [lambda: kernel(*inputs), lambda: kernel.eval_into(inputs, outs), blas,
             lambda: kernel.eval_into(inputs32, outs32)], args.rounds, reps=args.reps, warmup=3)
        rows.append(dict(kernel=name, flops=flops, api=bench.summary(api), eval=bench.summary(ev), blas=bench.summary(bl),
                         eval_over_blas=bench.ratio_summary(ev, bl), api_over_blas=bench.ratio_summary(api, bl),
                         eval32_over_blas=bench.ratio_summary(e32, bl), max_error=float(check(outs[0])),
                         seconds=ev))
    print(f"\n{args.rounds} rounds of {args.reps} back-to-back calls each; median and min over rounds "
          "(min: least disturbed by other load on the machine)")
    for stat in ("median", "min"):
        print(f"\n[{stat}]")
        print(bench.table([dict(kernel=r["kernel"], api=1e3 * r["api"][stat], eval=1e3 * r["eval"][stat],
                                blas=1e3 * r["blas"][stat], ratio=r["eval"][stat] / r["blas"][stat],
                                api_ratio=r["api"][stat] / r["blas"][stat],
                                eval_gf=r["flops"] / r["eval"][stat] / 1e9, blas_gf=r["flops"] / r["blas"][stat] / 1e9)
                           for r in rows],
                          [("kernel", "kernel", "<41s"), ("api ms", "api", ".3f"), ("eval ms", "eval", ".3f"),
                           ("blas ms", "blas", ".3f"), ("eval/blas", "ratio", ".3f"), ("api/blas", "api_ratio", ".3f"),
                           ("eval GF/s", "eval_gf", ".1f"), ("blas GF/s", "blas_gf", ".1f")]))
    print()
    for r in rows:
        print(f"{r['kernel']}: max |ref - fp32 numpy| = {r['max_error']:.4f}")
    for r in rows:
        e = r["eval32_over_blas"]
        print(f"{r['kernel']}: eval with float32 I/O buffers (the trainer's path) / blas: median {e['median']:.3f}, "
              f"min {e['min']:.3f}")
    worst = max(r["eval_over_blas"]["median"] for r in rows)
    print(f"\nworst eval/blas ratio (median of paired rounds): {worst:.3f} "
          f"(target <= 1.10: {'met' if worst <= 1.10 else 'NOT met'})")
    peak = bench.stated_peak("ref", peak.sample(2))
    kept, flagged = bench.screen(rows, peak["flops"])
    for r in flagged:
        print(f"FLAGGED, not a record: {r['kernel']}: {r['flag']}")
    return dict(peak=peak, results=_without_samples(kept), flagged=_without_samples(flagged))


# ------------------------------------------------------------------ the sweep

def linear_program(kind, cin, cout, seq, weights=None):
    """y = W x for W [cout, cin] as (MIL text, blobs), written with the MIL builder.

    baked: x [1, cin, 1, seq], W a BLOBFILE conv weight [cout, cin, 1, 1] (``weights``, fp16).
    dynamic: one input [1, C, 1, Wd], C = max(cin, cout), holding x [cin, seq] at column 0 and
    W [cout, cin] at column seq (Wd rounded up to a multiple of 32), as the model's dynamic
    kernels lay out activations and weights; W x is a matmul of the two slices."""
    b = mil.Builder()
    if kind == "baked":
        blob, offsets = mil.pack_weights([np.asarray(weights, np.float16).reshape(cout, cin, 1, 1)])
        x = b.input("x", "fp16", [1, cin, 1, seq])
        w = b.weight("W", "fp16", [cout, cin, 1, 1], "@model_path/weights/w.bin", offsets[0])
        y = b.op("y", "fp16", [1, cout, 1, seq], "conv", x=x, weight=w, strides=mil.ints([1, 1]),
                 pad_type=mil.string("valid"), pad=mil.ints([0, 0, 0, 0]), dilations=mil.ints([1, 1]),
                 groups=mil.int32(1))
        b.output(y)
        return b.text(), {"@model_path/weights/w.bin": blob}
    x = b.input("x", "fp16", dynamic_input_shape(cin, cout, seq))
    act = b.op("act", "fp16", [1, cin, 1, seq], "slice_by_size", x=x, begin=mil.ints([0, 0, 0, 0]),
               size=mil.ints([1, cin, 1, seq]))
    blk = b.op("w_block", "fp16", [1, cout, 1, cin], "slice_by_size", x=x, begin=mil.ints([0, 0, 0, seq]),
               size=mil.ints([1, cout, 1, cin]))
    w4 = b.op("w", "fp16", [1, 1, cout, cin], "reshape", x=blk, shape=mil.ints([1, 1, cout, cin]))
    a4 = b.op("act4", "fp16", [1, 1, cin, seq], "reshape", x=act, shape=mil.ints([1, 1, cin, seq]))
    y4 = b.op("y4", "fp16", [1, 1, cout, seq], "matmul", x=w4, y=a4, transpose_x=mil.boolean(False),
              transpose_y=mil.boolean(False))
    b.output(b.op("y", "fp16", [1, cout, 1, seq], "reshape", x=y4, shape=mil.ints([1, cout, 1, seq])))
    return b.text(), {}


def dynamic_input_shape(cin, cout, seq):
    return [1, max(cin, cout), 1, (seq + cin + 31) // 32 * 32]


def compile_timed(backend, text, blobs, name):
    t = time.perf_counter()
    k = K.compile(text, weights=blobs, backend=backend, name=name)
    compile_ms = 1e3 * (time.perf_counter() - t)
    load_ms = None  # ref compiles and loads in one step
    if k.runs_on == "ane":
        info = _native.ane_kernel_info(k._native)
        compile_ms, load_ms = info["compile_ms"], info["load_ms"]
    return k, compile_ms, load_ms


def sweep_point(backend, cin, cout, seq, evals, rng):
    """Both programs of one linear layer (and a direct sgemm on ref), timed taking turns."""
    flops = bench.gemm_flops(cout, seq, cin)
    w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    w16 = fp16.to_half(w)
    x = rng.standard_normal((cin, seq)).astype(np.float32)
    x16 = fp16.to_half(x)
    rows, contenders = [], []
    for kind in ("baked", "dynamic"):
        text, blobs = linear_program(kind, cin, cout, seq, weights=w16)
        problems = ane.check_program(text)
        if problems:
            raise RuntimeError(f"{kind} {cin}->{cout} S={seq} breaks the ANE rules: {problems[0]}")
        k, compile_ms, load_ms = compile_timed(backend, text, blobs, f"{kind}_{cin}x{cout}_s{seq}")
        if kind == "baked":
            inp = x16.reshape(1, cin, 1, seq)
        else:
            inp = np.zeros(dynamic_input_shape(cin, cout, seq), np.float16)
            inp[0, :cin, 0, :seq] = x16
            inp[0, :cout, 0, seq:seq + cin] = w16
        out = np.empty((1, cout, 1, seq), np.float16)
        contenders.append(lambda k=k, inp=inp, out=out: k.eval_into([inp], [out]))
        row = dict(kind=kind, shape=f"{cin}->{cout}", cin=cin, cout=cout, seq=seq, flops=flops,
                   compile_ms=compile_ms, load_ms=load_ms, runs_on=k.runs_on)
        if kind == "dynamic":
            # into a copy of the input: the timed evaluations use the weights checked below
            row["write_weights"] = bench.summary(_weight_writes(inp.copy(), seq, cin, cout, evals, rng))
        rows.append((row, k, inp, out))
    blas_s = None
    if backend == "ref":
        y32 = np.empty((cout, seq), np.float32)
        w32, x32 = w16.astype(np.float32), x16.astype(np.float32)
        contenders.append(lambda: _native.sgemm(w32, x32, out=y32))
    samples = bench.alternate(contenders, evals, warmup=1)
    if backend == "ref":
        blas_s = samples[-1]
    ref = w16.astype(np.float32) @ x16.astype(np.float32)
    out_rows = []
    for (row, k, inp, out), s in zip(rows, samples):
        err = float(np.abs(out.reshape(cout, seq).astype(np.float32) - ref).max() / max(1e-6, np.abs(ref).max()))
        row.update(eval=bench.summary(s), seconds=s, rel_error=err)
        row["gflops"] = flops / row["eval"]["median"] / 1e9
        row["gflops_best"] = flops / row["eval"]["min"] / 1e9
        if blas_s:
            row["blas"] = bench.summary(blas_s)
            row["over_blas"] = bench.ratio_summary(s, blas_s)
        out_rows.append(row)
    return out_rows


def _weight_writes(inp, seq, cin, cout, n, rng):
    """Seconds to stage new weights: fp16 conversion, then the copy into the input's weight block."""
    new = [(rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32) for _ in range(2)]
    stage = np.empty((cout, cin), np.float16)
    block = inp[0, :cout, 0, seq:seq + cin]
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        fp16.to_half(new[i % 2], out=stage)
        block[...] = stage
        times.append(time.perf_counter() - t)
    return times[1:]


def sweep(args, machine):
    from tqdm import tqdm

    backend = args.backend
    blas = bench.BlasPeak()
    points = [(w, w * r, s) for w in args.widths for r in SHAPES.values() for s in args.seqs]
    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, seq in tqdm(points, desc="sweep", unit="shape", disable=None, leave=False):
        if backend == "ref":
            blas.sample(2)
        rows += sweep_point(backend, cin, cout, seq, args.evals, rng)
    peak = bench.stated_peak("ref", blas.sample(2)) if backend == "ref" else bench.stated_peak(backend)
    kept, flagged = bench.screen(rows, peak["flops"])
    print_sweep(kept, flagged, peak)
    return dict(peak=peak, results=_without_samples(kept), flagged=_without_samples(flagged))


def print_sweep(kept, flagged, peak):
    cols = [("kind", "kind", "<7s"), ("layer", "shape", "<11s"), ("S", "seq", "d"), ("GFLOP", "gflop", ".3f"),
            ("compile ms", "compile_ms", ".1f"), ("load ms", "load_ms", ".1f"), ("min ms", "min", ".3f"),
            ("median ms", "median", ".3f"), ("max ms", "max", ".3f"), ("GFLOP/s", "gflops", ".1f"),
            ("/blas", "over_blas", ".3f"), ("write W ms", "write", ".3f")]
    table_rows = []
    for r in kept:
        table_rows.append(dict(kind=r["kind"], shape=r["shape"], seq=r["seq"], gflop=r["flops"] / 1e9,
                               compile_ms=r["compile_ms"], load_ms=r["load_ms"], min=1e3 * r["eval"]["min"],
                               median=1e3 * r["eval"]["median"], max=1e3 * r["eval"]["max"], gflops=r["gflops"],
                               over_blas=r["over_blas"]["median"] if "over_blas" in r else None,
                               write=1e3 * r["write_weights"]["median"] if "write_weights" in r else None))
    print()
    print(bench.table(table_rows, cols))
    print(f"\nstated peak: {peak['flops'] / 1e9:.1f} GFLOP/s ({peak['source']})" if peak["flops"]
          else f"\nno stated peak ({peak['source']}): only times <= 0 are flagged")
    print("'/blas': median over rounds of eval / direct sgemm of the same product, taking turns")
    for r in flagged:
        print(f"FLAGGED, not a record: {r['kind']} {r['shape']} S={r['seq']}: {r['flag']}")


def plot_sweep(results, prefix):
    paths = []
    series_lat, series_gf = {}, {}
    for r in results:
        label = f"{r['kind']} {'square' if r['cin'] == r['cout'] else '1:4'} S={r['seq']}"
        series_lat.setdefault(label, []).append((r["cin"], 1e3 * r["eval"]["median"]))
        series_gf.setdefault(label, []).append((r["cin"], r["gflops"]))
    paths.append(bench.plot_series(prefix + "_latency.png", "Linear layer latency (median)", "input width (in)",
                                   "ms", series_lat))
    paths.append(bench.plot_series(prefix + "_gflops.png", "Linear layer throughput (from the median)",
                                   "input width (in)", "GFLOP/s", series_gf, logy=False))
    return paths


def _without_samples(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="the linear-layer sweep instead of the two-shape check")
    ap.add_argument("--backend", default="ref", choices=["ref", "ane"], help="--sweep only (the check is ref's)")
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="--sweep: input widths")
    ap.add_argument("--max-width", type=int, help="--sweep: drop widths above this")
    ap.add_argument("--seqs", type=int, nargs="+", default=list(SEQS), help="--sweep: sequence lengths")
    ap.add_argument("--evals", type=int, default=5, help="--sweep: timed evaluations per program after one warm-up")
    ap.add_argument("--reps", type=int, default=20, help="back-to-back calls per timing round (the check)")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds (the check)")
    ap.add_argument("--quick", action="store_true", help="seconds: widths 128 and 256 at S=64, 2 evals (sweep); "
                    "3 rounds of 2 calls (check)")
    ap.add_argument("--json", help="where to write the JSON (default bench_results/bench_kernels[_sweep].json)")
    ap.add_argument("--plot", action="store_true", help="also write PNG charts beside the JSON")
    args = ap.parse_args()
    if args.quick:
        args.widths, args.seqs, args.evals, args.reps, args.rounds = [128, 256], [64], 2, 2, 3
    if args.max_width:
        args.widths = [w for w in args.widths if w <= args.max_width]
    if not args.widths or min(args.widths) < 1:
        raise UsageError("--widths must name at least one positive width (and --max-width keep one)")
    if min(args.seqs) < 32 or any(s % 32 for s in args.seqs):
        raise UsageError("--seqs must be multiples of 32 (the ANE's 64-byte rows), e.g. 64 256 1024")
    if min(args.evals, args.reps, args.rounds) < 1:
        raise UsageError("--evals, --reps and --rounds must be at least 1")
    if args.backend == "ane" and not ane.available():
        raise UsageError(f"the ANE is not available here ({ane.unavailable_reason()}); use --backend ref")
    machine = bench.machine_record(args.backend if args.sweep else "ref")
    print(bench.describe_machine(machine))
    info = anetrain.info()
    print(f"BLAS: {info['blas']}  fp16 path: {info['simd']}")
    suite = "bench_kernels_sweep" if args.sweep else "bench_kernels"
    out = sweep(args, machine) if args.sweep else overhead_check(args, machine)
    path = args.json or os.path.join("bench_results", suite + ".json")
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    bench.write_json(path, dict(suite=suite, machine=machine, settings=settings, **out))
    print(f"\nJSON: {path}")
    if args.plot and args.sweep:
        for p in plot_sweep(out["results"], os.path.splitext(path)[0]):
            print(f"plot: {p}")


if __name__ == "__main__":
    exit_on_error(main)
