#!/usr/bin/env python3
"""Self-test of the ANE backend: compile kernels on the Apple Neural Engine, run them on random
inputs and compare with the ref backend (which executes the same MIL text on the CPU).
Kernels: the built-in programs of anetrain.ane_programs and the model's own kernel generators
(anetrain.kernels.model_kernels, both pipelines) for a small GQA model.

Prints one row per kernel (max abs error, max relative error, verdict) and exits 1 when any
kernel mismatches or fails. Without a usable ANE it prints one line saying why and exits 77
("skipped").

    python scripts/selftest_ane.py [--seed N] [--tolerance T]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

EXIT_SKIPPED = 77


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and inputs")
    p.add_argument("--tolerance", type=float, default=2e-2,
                   help="mismatch when max abs error > tolerance * max(1, max |ref|)")
    return p.parse_args(argv)


def unsupported_ops(text, chip_family):
    from anetrain import _native

    ops = set(_native.mil_parse_summary(text)["ops"])
    return sorted(op for op in ops if not _native.ane_supports_op(op, chip_family))


def builtin_cases(dialect, rng):
    """(name, mil_text, weights) for the hand-written programs."""
    from anetrain.ane_programs import BUILTIN, Mil

    m = Mil(dialect)
    for name, build in BUILTIN.items():
        text, weights, _ = build(m, rng)
        yield name, text, weights


# A small GQA model: every kernel generator runs at a size that compiles in moments.
SMALL_MODEL = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256, hidden_dim=128, seq_len=32)


def layer_weights(rng, c):
    """Random llama-style layer weights [out, in] for the static pipeline's baked kernels."""
    hd = c["dim"] // c["n_heads"]
    q, kv, d, h = c["n_heads"] * hd, c["n_kv_heads"] * hd, c["dim"], c["hidden_dim"]
    shapes = {"wq": (q, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, q), "w1": (h, d), "w2": (d, h), "w3": (h, d)}
    return {k: (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for k, s in shapes.items()}


def model_cases(dialect_string, rng):
    """(name, mil_text, weights) for the model's kernel generators, both pipelines."""
    from anetrain import kernels

    weights = layer_weights(rng, SMALL_MODEL)
    for pipeline in ("static", "dynamic"):
        baked = weights if pipeline == "static" else None
        for name, text, blobs, _, _ in kernels.model_kernels(SMALL_MODEL, pipeline, baked, "fp16", dialect_string):
            yield f"{pipeline}/{name}", text, dict(blobs)


def random_inputs(kernel, rng):
    return [(0.5 * rng.standard_normal(i.shape)).astype(np.float16 if i.dtype == "fp16" else np.float32)
            for i in kernel.inputs]


def as_list(out):
    return list(out) if isinstance(out, tuple) else [out]


def compare(ane_outs, ref_outs, tolerance):
    """(max abs error, max rel error, ok) over all outputs."""
    worst_abs, worst_rel, ok = 0.0, 0.0, True
    for a, r in zip(ane_outs, ref_outs):
        a = np.asarray(a, dtype=np.float32)
        r = np.asarray(r, dtype=np.float32)
        if a.shape != r.shape or not np.all(np.isfinite(a)):
            return float("inf"), float("inf"), False
        err = np.abs(a - r)
        scale = max(1.0, float(np.max(np.abs(r))))
        worst_abs = max(worst_abs, float(err.max()))
        worst_rel = max(worst_rel, float((err / np.maximum(np.abs(r), 1e-3)).max()))
        ok = ok and float(err.max()) <= tolerance * scale
    return worst_abs, worst_rel, ok


def main(argv=None):
    args = parse_args(argv)
    from anetrain import ane, kernels

    if not ane.available():
        print(f"selftest_ane: skipped: {ane.unavailable_reason()}")
        return EXIT_SKIPPED
    chip, dialect = ane.chip(), ane.dialect()
    print(f"chip: {chip['brand']} ({chip['model']}, ANE {chip['ane_subtype'] or '?'}); "
          f"MIL dialect {ane.dialect_string()} ({dialect['source']}); options {ane.options()}")
    rng = np.random.default_rng(args.seed)
    cases = list(builtin_cases(dialect, rng)) + list(model_cases(ane.dialect_string(), rng))
    on_ane, on_ref = ane.new_backend(), kernels.new_backend("ref")
    print(f"{'kernel':34s} {'max abs err':>12s} {'max rel err':>12s}  result")
    failed = 0
    for name, text, weights in cases:
        missing = unsupported_ops(text, chip["family"])
        if missing:
            print(f"{name:34s} {'':>12s} {'':>12s}  skipped (the {chip['family']} ANE compiler lacks {', '.join(missing)})")
            continue
        try:
            ref = kernels.compile(text, weights, backend=on_ref, name=name)
            inputs = random_inputs(ref, rng)
            ref_outs = as_list(ref(*inputs))
            ane_outs = as_list(kernels.compile(text, weights, backend=on_ane, name=name)(*inputs))
        except Exception as e:  # noqa: BLE001  (every failure is a row of the report)
            failed += 1
            print(f"{name:34s} {'':>12s} {'':>12s}  FAILED: {type(e).__name__}: {e}")
            continue
        abs_err, rel_err, ok = compare(ane_outs, ref_outs, args.tolerance)
        failed += not ok
        print(f"{name:34s} {abs_err:12.3g} {rel_err:12.3g}  {'ok' if ok else 'MISMATCH'}")
    print(f"{len(cases)} kernels, {failed} failed; {on_ane.compiles} ANE compiles")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
