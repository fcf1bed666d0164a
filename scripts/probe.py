#!/usr/bin/env python3
"""Hardware probes of the Apple Neural Engine's private API; results as JSON.

Experiments (each recorded with its outcome or its error):
  weight_swap      rewrite a weight file in the model directory, unload + load without
                   recompiling: do the outputs follow the new weights?
  perf_stats       the performance-statistics classes and what an evaluation with
                   perfStatsMask set returns
  qos_sweep        compile / load / evaluate latency for QoS 0..63
  multi_input      a two-input program with one IOSurface per input vs the packed layout:
                   settles ANETRAIN_ANE_MULTI_INPUT for this machine, and records the outcome
                   for this chip family in the probe record (anetrain.ane.probe_record_path())
  weights_buffer   an IOSurface holding other weights passed as the request's weightsBuffer
  procedure_index  procedureIndex 0..15 on a single-procedure program
  shared_events    construction of the shared signal/wait event objects
Without a usable ANE it prints one line saying why and exits 77 ("skipped").

    python scripts/probe.py [--out probe.json] [--only name,...] [--evals N]
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

EXIT_SKIPPED = 77
PROBES = ["weight_swap", "perf_stats", "qos_sweep", "multi_input", "weights_buffer", "procedure_index", "shared_events"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--only", default=",".join(PROBES), help="comma-separated probes to run")
    p.add_argument("--evals", type=int, default=20, help="evaluations per latency measurement")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Context:
    def __init__(self, args):
        from anetrain import ane
        from anetrain.ane_programs import Mil

        self.args = args
        self.mil = Mil(ane.dialect())
        self.rng = np.random.default_rng(args.seed)

    def linear(self):
        """A conv program, its weights and an input."""
        from anetrain.ane_programs import linear

        text, weights, shapes = linear(self.mil, np.random.default_rng(self.args.seed))
        x = self.rng.standard_normal(shapes[0]).astype(np.float16)
        return text, weights, x

    def compile(self, text, weights, label, **options):
        """A kernel on a fresh ANE backend with these options (qos, multi_input)."""
        from anetrain import backends, kernels

        return kernels.compile(text, weights, backend=backends.new_backend("ane", **options), name=label)


def outputs_like(kernel):
    return [np.empty(o.shape, np.float32) for o in kernel.outputs]


def conv_reference(blob, x):
    """NumPy y = W x for a weight blob W [cout, cin, 1, 1] (data at byte 128) and x [1, cin, 1, S]."""
    w = np.frombuffer(blob[128:], dtype=np.float16).astype(np.float32)
    return w.reshape(-1, x.shape[1]) @ x[0, :, 0, :].astype(np.float32)


def closeness(y, ref):
    y = np.asarray(y, dtype=np.float32).reshape(ref.shape)
    return float(np.max(np.abs(y - ref)))


def other_weights(weights, rng):
    from anetrain.ane_programs import blob_file

    (key, blob), = weights.items()
    w = np.frombuffer(blob[128:], dtype=np.float16)
    return key, blob_file(rng.standard_normal(w.shape).astype(np.float16) / 8)


def probe_weight_swap(ctx):
    text, weights, x = ctx.linear()
    from anetrain import ane

    k = ctx.compile(text, weights, "probe_weight_swap")
    y_old = k(x).astype(np.float32)
    key, new_blob = other_weights(weights, ctx.rng)
    ane.overwrite_model_file(k, key.split("/", 1)[1], new_blob)
    t0 = time.perf_counter()
    ane.reload_kernel(k)
    reload_ms = (time.perf_counter() - t0) * 1e3
    y_new = k(x).astype(np.float32)
    err_old = closeness(y_new, conv_reference(weights[key], x))
    err_new = closeness(y_new, conv_reference(new_blob, x))
    follows = err_new < err_old
    return {"reload_ms": reload_ms, "max_diff_vs_before": float(np.max(np.abs(y_new - y_old))),
            "err_vs_old_weights": err_old, "err_vs_new_weights": err_new,
            "conclusion": "reload picks up the new weights" if follows else "weights stay baked in (reload ignored the file)"}


def probe_perf_stats(ctx):
    from anetrain import ane

    classes = {n: ane.describe_class(n) for n in
               ("_ANEPerformanceStats", "_ANEPerfRequest", "_ANEPerformanceCounters", "_ANEPerformanceStatsIOSurface")}
    text, weights, x = ctx.linear()
    k = ctx.compile(text, weights, "probe_perf_stats")
    report = ane.eval_with_perf_stats(k, [x], outputs_like(k), 0xFF)
    return {"classes": classes, "eval_with_mask_0xff": report}


def eval_ms(kernel, x, n):
    out = outputs_like(kernel)
    kernel.eval_into([x], out)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        kernel.eval_into([x], out)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def probe_qos_sweep(ctx):
    from anetrain import ane

    text, weights, x = ctx.linear()
    rows = []
    for qos in range(64):
        try:
            k = ctx.compile(text, weights, f"probe_qos_{qos}", qos=qos)
            t = ane.kernel_info(k)
            rows.append({"qos": qos, "compile_ms": t["compile_ms"], "load_ms": t["load_ms"],
                         "eval_ms_median": eval_ms(k, x, ctx.args.evals)})
            del k
        except Exception as e:  # noqa: BLE001  (a failing QoS value is a result)
            rows.append({"qos": qos, "error": f"{type(e).__name__}: {e}"})
    return rows


def probe_multi_input(ctx):
    from anetrain.ane_programs import two_input_add

    text, weights, shapes = two_input_add(ctx.mil, ctx.rng)
    a, b = (ctx.rng.standard_normal(s).astype(np.float16) for s in shapes)
    expected = (a.astype(np.float32) + b.astype(np.float32)).astype(np.float16).astype(np.float32)
    result = {}
    for layout, multi in (("packed", False), ("multi_input", True)):
        try:
            y = ctx.compile(text, weights, f"probe_{layout}", multi_input=multi)(a, b)
            err = closeness(y, expected)
            result[layout] = {"max_abs_err": err, "ok": err < 1e-2}
        except Exception as e:  # noqa: BLE001
            result[layout] = {"error": f"{type(e).__name__}: {e}", "ok": False}
    result["conclusion"] = ("multi-input requests work: ANETRAIN_ANE_MULTI_INPUT=1 is safe here"
                            if result["multi_input"]["ok"] else "keep ANETRAIN_ANE_MULTI_INPUT=0 (packed input)")
    result["recorded"] = record_multi_input(result["multi_input"]["ok"])
    return result


def record_multi_input(ok):
    """Write the outcome to the probe record for this chip family, where the ANE rule checker reads
    it (anetrain.ane.check_program); the record's path, or None when the family is unknown."""
    from anetrain import ane

    family = ane.chip()["family"]
    if not family:
        return None
    return ane.record_probe(family, multi_io=bool(ok), macos=platform.mac_ver()[0])


def probe_weights_buffer(ctx):
    text, weights, x = ctx.linear()
    from anetrain import ane

    k = ctx.compile(text, weights, "probe_weights_buffer")
    key, new_blob = other_weights(weights, ctx.rng)
    out = outputs_like(k)
    ane.eval_variant(k, [x], out, 0, new_blob)
    y = out[0]
    err_old = closeness(y, conv_reference(weights[key], x))
    err_new = closeness(y, conv_reference(new_blob, x))
    return {"err_vs_compiled_weights": err_old, "err_vs_buffer_weights": err_new,
            "conclusion": "weightsBuffer replaces the weights" if err_new < err_old else "weightsBuffer has no effect"}


def probe_procedure_index(ctx):
    text, weights, x = ctx.linear()
    from anetrain import ane

    k = ctx.compile(text, weights, "probe_procedure_index")
    base = k(x).astype(np.float32)
    rows = []
    for i in range(16):
        try:
            out = outputs_like(k)
            ane.eval_variant(k, [x], out, i)
            y = out[0]
            rows.append({"procedure_index": i, "max_diff_vs_index_0": float(np.max(np.abs(y - base)))})
        except Exception as e:  # noqa: BLE001
            rows.append({"procedure_index": i, "error": f"{type(e).__name__}: {e}"})
    return rows


def probe_shared_events(ctx):
    from anetrain import ane

    classes = {n: ane.describe_class(n) for n in
               ("_ANESharedEvents", "_ANESharedSignalEvent", "_ANESharedWaitEvent")}
    return {"classes": classes, "construction": ane.shared_event_probe()}


def machine():
    from anetrain import ane

    return {"chip": ane.chip(), "dialect": ane.dialect(), "options": ane.options(),
            "macos": platform.mac_ver()[0], "python": platform.python_version(),
            "ane_classes": ane.framework_classes("_ANE")}


def main(argv=None):
    args = parse_args(argv)
    from anetrain import ane

    if not ane.available():
        print(f"probe: skipped: {ane.unavailable_reason()}")
        return EXIT_SKIPPED
    chosen = [p for p in args.only.split(",") if p]
    unknown = sorted(set(chosen) - set(PROBES))
    if unknown:
        print(f"probe: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}", file=sys.stderr)
        return 2
    ctx = Context(args)
    results = {"machine": machine()}
    for name in chosen:
        print(f"probe: {name} ...", file=sys.stderr)
        try:
            results[name] = globals()[f"probe_{name}"](ctx)
        except Exception as e:  # noqa: BLE001  (one broken probe must not hide the others)
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    results["compiles"] = ane.process_compiles()
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
