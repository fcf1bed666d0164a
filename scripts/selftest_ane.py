#!/usr/bin/env python3
"""Self-test of the ANE backend: a ladder of rungs, each resting on the one below.

  1 framework   AppleNeuralEngine.framework loads and has the classes the backend uses
  2 selectors   those classes answer every message the runtime sends
  3 program     a trivial program (a [1, 64, 1, 32] 1x1-conv linear layer) compiles, loads,
                evaluates and matches NumPy
  4 kernels     every kernel of a small model (anetrain.ane.programs) matches the ref backend
                running the same MIL text on the same input
  5 step        one Stories15M-shaped training step on the ANE has the ref step's loss
  6 training    20 steps on the ANE lower the loss

It stops at the first failing rung with one line saying why and exits 1; 0 when all pass. Either
way it writes a JSON report (chip, macOS, MIL dialect, each rung's outcome and timings) to attach
to a bug report (docs/macos.md).

    python scripts/selftest_ane.py [--report ane_selftest.json] [--seed N]
"""
import argparse
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The classes and messages native/backend/ane/runtime.mm sends: (class, selector, class method?).
SELECTORS = [
    ("_ANEInMemoryModelDescriptor", "modelWithMILText:weights:optionsPlist:", True),
    ("_ANEInMemoryModel", "inMemoryModelWithDescriptor:", True),
    ("_ANEInMemoryModel", "hexStringIdentifier", False),
    ("_ANEInMemoryModel", "compileWithQoS:options:error:", False),
    ("_ANEInMemoryModel", "loadWithQoS:options:error:", False),
    ("_ANEInMemoryModel", "evaluateWithQoS:options:request:error:", False),
    ("_ANEInMemoryModel", "unloadWithQoS:error:", False),
    ("_ANERequest", "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:", True),
    ("_ANEIOSurfaceObject", "objectWithIOSurface:", True),
]
# Rung 4's model: every kernel generator at a size that compiles in moments.
SMALL_MODEL = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256, hidden_dim=128, seq_len=32)
KERNEL_TOLERANCE = 2e-2  # max |ane - ref| relative to max |ref|
LOSS_TOLERANCE = 1e-2    # relative difference of the ANE and ref losses
TRAINING_STEPS = 20
WEIGHT_SCALE = 0.05      # packed weight blocks of a kernel input, against unit-scale activations


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", default="ane_selftest.json", help="where to write the JSON report")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights, inputs and tokens")
    return p.parse_args(argv)


class RungFailed(Exception):
    """A rung's check did not hold; the message is the one line the user sees."""


def relative_error(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if got.shape != want.shape:
        return float("inf")
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6))


# ------------------------------------------------------------------ the rungs

def rung_framework(ctx):
    from anetrain import ane

    if not ane.available():
        raise RungFailed(ane.unavailable_reason())
    return {}


def rung_selectors(ctx):
    from anetrain import ane

    missing = []
    for cls in dict.fromkeys(c for c, _, _ in SELECTORS):
        if not ane.describe_class(cls)["exists"]:
            missing.append(cls)
    for cls, sel, class_method in SELECTORS:
        if cls not in missing and not ane.class_answers(cls, sel, class_method):
            missing.append(f"{'+' if class_method else '-'}[{cls} {sel}]")
    if missing:
        raise RungFailed(f"the framework lacks {', '.join(missing)}")
    return {"checked": len(SELECTORS)}


def rung_program(ctx):
    from anetrain import ane, kernels
    from anetrain.ane_programs import Mil, linear

    text, weights, shapes = linear(Mil(ane.dialect()), ctx.rng)
    x = ctx.rng.standard_normal(shapes[0]).astype(np.float16)
    k = kernels.compile(text, weights, backend="ane", name="selftest_linear")
    t0 = time.perf_counter()
    y = k(x)
    eval_ms = (time.perf_counter() - t0) * 1e3
    blob = next(iter(weights.values()))
    w = np.frombuffer(blob[128:], dtype=np.float16).astype(np.float32).reshape(-1, shapes[0][1])
    want = (w @ x[0, :, 0, :].astype(np.float32))[None, :, None, :]
    err = relative_error(y, want)
    if err > KERNEL_TOLERANCE:
        raise RungFailed(f"the linear program's output differs from NumPy (relative error {err:.3g})")
    return {"relative_error": err, "eval_ms": eval_ms}


def kernel_input(layout, shape, rng):
    """A random fp16 input: unit-scale activations, packed weight blocks (llama2.c names: w*) scaled down."""
    x = rng.standard_normal(shape).astype(np.float32)
    for name, channel, column, channels, columns in layout:
        if name.split(".")[-1].startswith("w"):
            x[:, channel:channel + channels, :, column:column + columns] *= WEIGHT_SCALE
    return x.astype(np.float16)


def rung_kernels(ctx):
    from anetrain import ane, kernels

    rows = []
    for name, text, blobs, input_layout, _ in ane.programs(SMALL_MODEL, "dynamic"):
        on_ref = kernels.compile(text, dict(blobs), backend="ref", name=name)
        x = kernel_input(input_layout, on_ref.inputs[0].shape, ctx.rng)
        try:
            got = kernels.compile(text, dict(blobs), backend="ane", name=name)(x)
        except Exception as e:  # noqa: BLE001  (the failing kernel is named in the one line)
            raise RungFailed(f"kernel {name}: {type(e).__name__}: {e}") from e
        err = relative_error(got, on_ref(x))
        rows.append({"kernel": name, "relative_error": err})
        if err > KERNEL_TOLERANCE:
            raise RungFailed(f"kernel {name} differs from ref (relative error {err:.3g} > {KERNEL_TOLERANCE})")
    return {"kernels": rows}


def stories15m_model(backend):
    from anetrain.config import PRESETS
    from anetrain.model import Model

    return Model(PRESETS["stories15M"], backend=backend, pipeline="dynamic", seed=1, ane_shaped=True)


def rung_step(ctx):
    from anetrain.config import PRESETS

    cfg = PRESETS["stories15M"]
    ctx.tokens = ctx.rng.integers(0, cfg["vocab_size"], size=(1, cfg["seq_len"] + 1), dtype=np.int32)
    ctx.model = stories15m_model("ane")
    ane_loss, timings = ctx.model.step(ctx.tokens, lr=ctx.lr)
    ref_loss, _ = stories15m_model("ref").step(ctx.tokens, lr=ctx.lr)
    diff = abs(ane_loss - ref_loss) / abs(ref_loss)
    if not np.isfinite(ane_loss) or diff > LOSS_TOLERANCE:
        raise RungFailed(f"the ANE step's loss {ane_loss:.5g} differs from ref's {ref_loss:.5g} "
                         f"(relative {diff:.3g} > {LOSS_TOLERANCE})")
    ctx.losses = [float(ane_loss)]
    return {"ane_loss": float(ane_loss), "ref_loss": float(ref_loss), "step_ms": timings}


def rung_training(ctx):
    # The same batch again and again: the loss must fall on it if the gradients are right.
    for _ in range(TRAINING_STEPS - 1):
        loss, _ = ctx.model.step(ctx.tokens, lr=ctx.lr)
        ctx.losses.append(float(loss))
    if not (np.isfinite(ctx.losses[-1]) and ctx.losses[-1] < ctx.losses[0]):
        raise RungFailed(f"{TRAINING_STEPS} steps did not lower the loss ({ctx.losses[0]:.4g} -> {ctx.losses[-1]:.4g})")
    return {"losses": ctx.losses}


RUNGS = [
    ("framework", "AppleNeuralEngine.framework loads", rung_framework),
    ("selectors", "its classes answer the runtime's messages", rung_selectors),
    ("program", "a [1, 64, 1, 32] linear program matches NumPy", rung_program),
    ("kernels", "a small model's kernels match ref", rung_kernels),
    ("step", "a Stories15M step's loss matches ref", rung_step),
    ("training", f"{TRAINING_STEPS} steps lower the loss", rung_training),
]


# ------------------------------------------------------------------ the report

class Context:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.lr = 1e-3


def machine():
    """What a bug report needs to know about this machine; never fails."""
    import anetrain
    from anetrain import ane

    info = {"anetrain": anetrain.__version__, "python": platform.python_version(),
            "macos": platform.mac_ver()[0], "platform": platform.platform()}
    for key, query in (("chip", ane.chip), ("dialect", ane.dialect), ("dialect_string", ane.dialect_string),
                       ("options", ane.options)):
        try:
            info[key] = query()
        except Exception as e:  # noqa: BLE001  (a bad setting is itself worth reporting)
            info[key] = {"error": f"{type(e).__name__}: {e}"}
    return info


def run_ladder(ctx):
    """Runs the rungs in order until one fails; returns (rung records, the failure line or None)."""
    records, failure = [], None
    for number, (key, title, run) in enumerate(RUNGS, 1):
        record = {"rung": number, "name": key, "title": title}
        if failure is not None:
            record.update(ok=None, error="not run")
            records.append(record)
            continue
        t0 = time.perf_counter()
        try:
            record["details"] = run(ctx)
            record.update(ok=True, error=None)
        except Exception as e:  # noqa: BLE001  (every failure becomes the report's one line)
            message = str(e) if isinstance(e, RungFailed) else f"{type(e).__name__}: {e}"
            record.update(ok=False, error=message)
            if not isinstance(e, RungFailed):
                record["traceback"] = traceback.format_exc()
            failure = f"selftest_ane: rung {number} ({title}) failed: {message}"
        record["timings"] = {"seconds": time.perf_counter() - t0}
        records.append(record)
        if record["ok"]:
            print(f"rung {number} ok: {title} ({record['timings']['seconds']:.1f} s)", flush=True)
    return records, failure


def main(argv=None):
    args = parse_args(argv)
    report = machine()
    report["rungs"], failure = run_ladder(Context(args.seed))
    report["ok"] = failure is None
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")
    if failure:
        print(failure.splitlines()[0])
    else:
        print(f"selftest_ane: all {len(RUNGS)} rungs passed")
    print(f"report: {args.report}", file=sys.stderr)
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
