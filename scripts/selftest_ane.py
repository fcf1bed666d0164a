#!/usr/bin/env python3
"""Self-test of the ANE backend: compile kernels on the Apple Neural Engine, run them on random
inputs and compare with the ref backend (which executes the same MIL text on the CPU).

Prints one row per kernel (max abs error, max relative error, verdict) and exits 1 when any
kernel mismatches or fails. Without a usable ANE it prints one line saying why and exits 77
("skipped"). The built-in programs are always run; the model's own kernels are added when
anetrain.kernels.model_kernels exists.

    python scripts/selftest_ane.py [--seed N] [--tolerance T] [--config NAME]
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
    p.add_argument("--config", default="stories-tiny", help="model config for the model's kernels")
    return p.parse_args(argv)


def builtin_cases(dialect, chip_family, rng):
    """(name, mil_text, weights, input_shapes, skip_reason) for the hand-written programs."""
    from anetrain import _native
    from anetrain.ane_programs import BUILTIN, Mil

    m = Mil(dialect)
    for name, (build, ops) in BUILTIN.items():
        missing = [op for op in ops if not _native.ane_supports_op(op, chip_family)]
        text, weights, shapes = build(m, rng)
        reason = f"the {chip_family} ANE compiler lacks {', '.join(missing)}" if missing else ""
        yield name, text, weights, shapes, reason


def model_cases(config):
    """The model's kernel generators, when they exist, for both pipelines."""
    from anetrain import kernels

    if not hasattr(kernels, "model_kernels"):
        print("note: anetrain.kernels.model_kernels does not exist yet; only the built-in programs run")
        return
    for pipeline in ("static", "dynamic"):
        for k in kernels.model_kernels(config, pipeline):
            yield f"{pipeline}/{k.name}", k.mil_text, dict(k.weights), [list(s) for s in k.input_shapes], ""


def run_on_ref(text, weights, name, inputs):
    from anetrain import kernels

    out = kernels.compile(text, weights=weights, backend="ref", name=name)(*inputs)
    return list(out) if isinstance(out, tuple) else [out]


def run_on_ane(text, weights, name, inputs):
    from anetrain import _native

    return _native.ane_compile(text, weights, name).eval(inputs)


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
    from anetrain import ane

    if not ane.available():
        print(f"selftest_ane: skipped: {ane.unavailable_reason()}")
        return EXIT_SKIPPED
    chip, dialect = ane.chip(), ane.dialect()
    print(f"chip: {chip['brand']} ({chip['model']}, ANE {chip['ane_subtype'] or '?'}); "
          f"MIL dialect {dialect['version']}/{dialect['opset']}{' verbose' if dialect['verbose_scalars'] else ''} "
          f"({dialect['source']}); options {ane.options()}")
    rng = np.random.default_rng(args.seed)
    cases = list(builtin_cases(dialect, chip["family"], rng)) + list(model_cases(args.config))
    print(f"{'kernel':34s} {'max abs err':>12s} {'max rel err':>12s}  result")
    failed = 0
    for name, text, weights, shapes, skip in cases:
        if skip:
            print(f"{name:34s} {'':>12s} {'':>12s}  skipped ({skip})")
            continue
        inputs = [rng.standard_normal(s).astype(np.float16) for s in shapes]
        try:
            ref_outs = run_on_ref(text, weights, name, inputs)
            ane_outs = run_on_ane(text, weights, name, inputs)
        except Exception as e:  # noqa: BLE001  (every failure is a row of the report)
            failed += 1
            print(f"{name:34s} {'':>12s} {'':>12s}  FAILED: {type(e).__name__}: {e}")
            continue
        abs_err, rel_err, ok = compare(ane_outs, ref_outs, args.tolerance)
        failed += not ok
        print(f"{name:34s} {abs_err:12.3g} {rel_err:12.3g}  {'ok' if ok else 'MISMATCH'}")
    print(f"{len(cases)} kernels, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
