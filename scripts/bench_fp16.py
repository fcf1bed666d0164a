#!/usr/bin/env python3
"""fp16 <-> fp32 conversion throughput: anetrain's kernels against NumPy's astype, same run.

GB/s counts bytes read + written (6 bytes per element). Prints the ratio to NumPy for each
direction: into a new array (anetrain recycles the memory of arrays it returned, so repeated
conversions skip page faults), into a preallocated out=, and into never-used memory (the first
conversion of a size, which pays the kernel's page faults; reported, not part of the target).
Targets (issue 2): >= 10x NumPy's astype and >= 20 GB/s. Writes JSON (--json) with the machine
record; --quick runs 1M elements in seconds.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import anetrain  # noqa: E402
from anetrain import bench, fp16  # noqa: E402
from anetrain.bench import best_seconds  # noqa: E402
from anetrain.errors import UsageError, exit_on_error  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16 << 20, help="elements (default 16M)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--path", default="auto", help="fp16 kernel set: auto, scalar, f16c, avx512, neon")
    ap.add_argument("--quick", action="store_true", help="1M elements, 2 repeats: seconds (figures mean little)")
    ap.add_argument("--json", default=os.path.join("bench_results", "bench_fp16.json"), help="where to write the JSON")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 1 << 20, 2
    if args.n < 1 or args.repeats < 1:
        raise UsageError("--n and --repeats must be at least 1")
    try:
        fp16.set_path(args.path)
    except ValueError as e:
        raise UsageError(f"--path {args.path}: {e}") from None
    info = anetrain.info()
    machine = bench.machine_record("ref")
    print(bench.describe_machine(machine))
    print(f"anetrain {info['version']}  simd={fp16.active_path()} (available: {', '.join(info['fp16_paths'])})"
          f"  threads={info['threads']}")
    n = args.n
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal(n).astype(np.float32)
    x16 = x32.astype(np.float16)
    out16 = np.empty(n, np.float16)
    out32 = np.empty(n, np.float32)
    gb = 6 * n / 1e9

    rows = [
        ("f32->f16 new array", lambda: fp16.to_half(x32), lambda: x32.astype(np.float16)),
        ("f32->f16 into out=", lambda: fp16.to_half(x32, out=out16), lambda: np.copyto(out16, x32, casting="unsafe")),
        ("f16->f32 new array", lambda: fp16.to_float(x16), lambda: x16.astype(np.float32)),
        ("f16->f32 into out=", lambda: fp16.to_float(x16, out=out32), lambda: np.copyto(out32, x16)),
    ]
    print(f"\n{n:,} elements, best of {args.repeats}\n")
    print(f"{'conversion':<22}{'anetrain GB/s':>14}{'numpy GB/s':>12}{'ratio':>8}")
    worst_ratio, worst_gbs = float("inf"), float("inf")
    results = []
    for label, ours, ref in rows:
        t_ours = best_seconds(ours, args.repeats)
        t_ref = best_seconds(ref, max(3, args.repeats // 3))
        ratio = t_ref / t_ours
        worst_ratio, worst_gbs = min(worst_ratio, ratio), min(worst_gbs, gb / t_ours)
        results.append(dict(conversion=label, seconds=t_ours, numpy_seconds=t_ref, gbs=gb / t_ours, ratio=ratio))
        print(f"{label:<22}{gb / t_ours:>14.1f}{gb / t_ref:>12.1f}{ratio:>7.1f}x")
    ok = worst_ratio >= 10 and worst_gbs >= 20
    print(f"\nworst: {worst_gbs:.1f} GB/s, {worst_ratio:.1f}x numpy  -> target (>=20 GB/s, >=10x): "
          f"{'met' if ok else 'NOT met'}")

    def first_touch(fn):
        best = float("inf")
        for _ in range(max(3, args.repeats // 3)):
            anetrain._native.buffer_cache_clear()
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    for label, fn, ref in (("f32->f16", lambda: fp16.to_half(x32), lambda: x32.astype(np.float16)),
                           ("f16->f32", lambda: fp16.to_float(x16), lambda: x16.astype(np.float32))):
        t = first_touch(fn)
        results.append(dict(conversion=f"{label} into never-used memory", seconds=t, gbs=gb / t))
        print(f"first conversion into never-used memory, {label}: {gb / t:.1f} GB/s, "
              f"{best_seconds(ref, 3) / t:.1f}x numpy astype")
    kept, flagged = bench.screen(results, None)  # no FLOPs here: only impossible times are flagged
    for r in flagged:
        print(f"FLAGGED, not a record: {r['conversion']}: {r['flag']}")
    path = bench.write_json(args.json, dict(suite="bench_fp16", machine=machine, settings=vars(args), n=n,
                                            results=kept, flagged=flagged))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    exit_on_error(main)
