"""Helpers shared by the benchmarks in scripts/: timing and its statistics, FLOP counts, the
backend's stated peak and the filter of impossible results, the machine record, JSON and plots.

Every suite measures the same way: warm up, then time with the contenders taking turns round by
round (a shared VM's speed drifts over minutes, so turns see the same machine), and report
min / median / max. A result is *impossible* when a time is zero or negative or its FLOP/s
exceed the backend's stated peak: the BLAS peak measured in the same run on ref, the chip's
recorded peak on the ANE. Impossible results are flagged and never become records.
"""
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np

from . import __version__, _native, ane
from .config import model_config_of
from .rundir import write_atomically

# ------------------------------------------------------------------ timing and statistics


def best_seconds(fn, repeats):
    """The fastest of ``repeats`` calls of ``fn``, in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def in_subprocess(script, which, job):
    """The JSON a fresh ``python script --worker which --job JSON`` prints last, so a measurement
    (peak memory above all) is that process's own; exits naming the worker when it fails."""
    out = subprocess.run([sys.executable, script, "--worker", which, "--job", json.dumps(job)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{which} benchmark failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_bytes():
    """This process's peak resident memory so far. On Linux the high-water mark of its own memory
    image (VmHWM): ru_maxrss there also holds the parent's size at fork, kept across the exec,
    so a worker started by a large parent would seem to have used as much."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def alternate(fns, rounds, reps=1, warmup=1):
    """Seconds per call of each callable: per round, each callable in turn runs ``reps`` calls back
    to back (their mean is the round's sample). Returns one list of ``rounds`` samples per callable."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[i].append((time.perf_counter() - t) / reps)
    return samples


def summary(samples):
    """dict(min, median, max, n) of a list of numbers."""
    s = [float(x) for x in samples]
    return dict(min=min(s), median=statistics.median(s), max=max(s), n=len(s))


def ratio_summary(a, b):
    """Round-by-round ratios a[i] / b[i] of paired samples, summarised (the ratio that survives a
    drifting machine: both sides of a pair saw the same minutes)."""
    return summary([x / y for x, y in zip(a, b)])


# ------------------------------------------------------------------ FLOPs and the GEMMs of a step


def gemm_flops(m, n, k):
    """FLOPs of one product [m, k] x [k, n]: exactly 2*m*n*k (a multiply and an add per term)."""
    return 2 * int(m) * int(n) * int(k)


# One product of a training step as the trainer computes it: C [m, n] = op(A) op(B), A [m, k]
# (stored [k, m] when trans_a), B [k, n] (stored [n, k] when trans_b); `count` independent
# products of this shape run as one batch (attention heads); `accumulate` adds into C (beta 1).
Gemm = namedtuple("Gemm", "name m n k trans_a trans_b count accumulate")


def step_gemms(config, batch=1):
    """Every matrix product of one training step (forward and backward over ``batch`` sequences)
    of llama2.c's Transformer, in the trainer's order and orientation: [C, S] channel-major
    activations, weights [out, in] as llama2.c stores them, the classifier tied to the embedding.

    Per sequence and layer: the seven linear layers forward (W x), their input gradients
    (W^T dy) and weight gradients (dy x^T, accumulated over the batch), and per head the six
    attention products (scores, probs @ v; dv, dprobs, dq, dk), counted in full (the ref backend
    skips the zero triangle of causal operands, about 1% of a Stories step's FLOPs). Per
    sequence: the classifier forward, its input gradient and the embedding's gradient."""
    c = model_config_of(config)
    S, D, H, V = c.seq_len, c.dim, c.hidden_dim, c.vocab_size
    QD, KD, hd, NH = c.q_dim, c.kv_dim, c.head_dim, c.n_heads
    linears = [("wq", QD, D), ("wk", KD, D), ("wv", KD, D), ("wo", D, QD), ("w1", H, D), ("w3", H, D), ("w2", D, H)]
    out = []
    for b in range(batch):
        for layer in range(c.n_layers):
            p = f"layers.{layer}."
            fwd = [Gemm(p + w, o, S, i, False, False, 1, False) for w, o, i in linears]
            heads = [Gemm(p + "scores", S, S, hd, True, False, NH, False), Gemm(p + "probs_v", hd, S, S, False, True, NH, False)]
            out += fwd[:3] + heads + fwd[3:]
        out += [Gemm("classifier", V, S, D, False, False, 1, False),
                Gemm("classifier.dx", D, S, V, True, False, 1, False),
                Gemm("tok_embeddings.dw", V, D, S, False, True, 1, b > 0)]
        for layer in reversed(range(c.n_layers)):
            p = f"layers.{layer}."
            ffn = [("w2", D, H), ("w1", H, D), ("w3", H, D)]
            attn = [("wo", D, QD), ("wq", QD, D), ("wk", KD, D), ("wv", KD, D)]
            out += [Gemm(p + w + ".dx", i, S, o, True, False, 1, False) for w, o, i in ffn]
            out += [Gemm(p + w + ".dw", o, i, S, False, True, 1, b > 0) for w, o, i in ffn]
            out.append(Gemm(p + "wo.dx", QD, S, D, True, False, 1, False))
            out += [Gemm(p + "dv", hd, S, S, False, False, NH, False), Gemm(p + "dprobs", S, S, hd, True, False, NH, False),
                    Gemm(p + "dq", hd, S, S, False, True, NH, False), Gemm(p + "dk", hd, S, S, False, False, NH, False)]
            out += [Gemm(p + w + ".dx", i, S, o, True, False, 1, False) for w, o, i in attn[1:]]
            out += [Gemm(p + w + ".dw", o, i, S, False, True, 1, b > 0) for w, o, i in attn]
    return out


def by_component(gemms):
    """The products grouped by the part of the trainer's timing breakdown that runs them:
    "kernels" (the layers' forward and input-gradient products, inside the MIL kernels), "dw"
    (the layers' weight gradients) and "cpu_ops" (the classifier and the embedding's gradient)."""
    groups = {"kernels": [], "dw": [], "cpu_ops": []}
    for g in gemms:
        layer = g.name.startswith("layers.")
        groups["dw" if layer and g.name.endswith(".dw") else "kernels" if layer else "cpu_ops"].append(g)
    return groups


class TrainingStep:
    """One training step of ``model`` (accumulate over ``batch`` fixed random sequences, then
    AdamW), as a callable; ``timings`` collects each step's breakdown (Model.timings)."""

    def __init__(self, model, batch, seed=0):
        cfg = model.config
        self.model, self.timings = model, []
        self.tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, cfg.seq_len + 1)).astype(np.int32)

    def __call__(self):
        self.model.reset_timings()
        self.model.accumulate(self.tokens)
        self.model.update(lr=1e-4, clip=1.0)
        self.timings.append(self.model.timings)


def total_flops(gemms):
    return sum(g.count * gemm_flops(g.m, g.n, g.k) for g in gemms)


# The products each of the model's per-layer kernels computes (step_gemms' names without the
# layer prefix). attention_backward recomputes the scores unless the forward kernel hands it
# the probabilities (the split programs' probs tap).
KERNEL_PRODUCTS = {
    "attention_forward": ("wq", "wk", "wv", "scores", "probs_v", "wo"),
    "ffn_forward": ("w1", "w3", "w2"),
    "ffn_backward": ("w2.dx", "w1.dx", "w3.dx"),
    "attention_backward": ("wo.dx", "dv", "dprobs", "dq", "dk", "wq.dx", "wk.dx", "wv.dx"),
}


def kernel_flops(config, kernel, recomputes_probs=False):
    """FLOPs of one evaluation of one of the model's per-layer kernels."""
    names = KERNEL_PRODUCTS[kernel] + (("scores",) if recomputes_probs and kernel == "attention_backward" else ())
    return sum(g.count * gemm_flops(g.m, g.n, g.k) for g in step_gemms(config)
               if g.name.startswith("layers.0.") and g.name[len("layers.0."):] in names)


class GemmRunner:
    """Runs a list of Gemms (step_gemms) through anetrain's BLAS shim, on the threads anetrain
    uses: single products split across the pool, batches one product per pool thread, the same
    path as the trainer's and the ref backend's products. Each named product has operands and a
    result of its own (as many bytes as the trainer streams: no product finds another's data in
    cache); the sequences of a batch share them, as they share a layer's weights and gradients."""

    def __init__(self, gemms):
        self.calls = []
        arrays = {}
        for g in gemms:
            a_shape = (g.k, g.m) if g.trans_a else (g.m, g.k)
            b_shape = (g.n, g.k) if g.trans_b else (g.k, g.n)
            batch = (g.count,) if g.count > 1 else ()
            if g.name not in arrays:
                arrays[g.name] = (_filled(batch + a_shape), _filled(batch + b_shape), _filled(batch + (g.m, g.n)))
            a, b, c = arrays[g.name]
            if g.count > 1:
                self.calls.append((_native.sgemm_batch, (a, b, g.trans_a, g.trans_b, c)))
            else:
                self.calls.append((_sgemm, (a, b, g.trans_a, g.trans_b, c, 1.0 if g.accumulate else 0.0)))

    def __call__(self):
        for fn, args in self.calls:
            fn(*args)


def _sgemm(a, b, ta, tb, c, beta):
    _native.sgemm(a, b, ta, tb, out=c, beta=beta)


def _filled(shape):
    # Small normal values: no denormals or overflow anywhere in the products.
    return np.full(shape, 0.01, np.float32)


# ------------------------------------------------------------------ peaks and the impossible-result filter

# Apple's announced Neural Engine throughput per chip family, in tera-operations per second, with
# the source of each figure. They are the chips' recorded peaks for the filter: the M4's figure
# counts INT8 operations (about twice its fp16 rate, which measured 18.6 TOPS), the Ultra parts
# have twice the cores, and the M5's figure was not disclosed.
CHIP_PEAKS = {
    "M1": (11.0, "Apple, M1 announcement (Nov 2020): 11 trillion operations per second"),
    "M2": (15.8, "Apple, M2 announcement (Jun 2022): 15.8 trillion operations per second"),
    "M3": (18.0, "Apple, M3 family announcement (Oct 2023): 18 trillion operations per second"),
    "M4": (38.0, "Apple, M4 announcement (May 2024): 38 trillion operations per second (INT8)"),
    "M5": (None, "not disclosed by Apple"),
}


def chip_peak(chip_info):
    """(peak FLOP/s or None, source) of an ane.chip() dict, from CHIP_PEAKS."""
    family = chip_info.get("family", "")
    peak, source = CHIP_PEAKS.get(family, (None, f"no recorded peak for chip family {family!r}"))
    if peak is None:
        return None, source
    if "ultra" in chip_info.get("brand", "").lower():
        return 2 * peak * 1e12, source + ", doubled for an Ultra's two dies"
    return peak * 1e12, source


class BlasPeak:
    """The BLAS peak of this run: the best FLOP/s of n x n x n sgemms through anetrain's BLAS shim
    on its threads (what the ref backend's products run on), sampled through the run. Short
    measurements catch a shared machine's quiet moments, so a peak sampled once at the start
    could sit below what a later short kernel reaches; call sample() between measurements."""

    def __init__(self, n=2048):
        self.n = n
        self._a, self._b = _filled((n, n)), _filled((n, n))
        self._c = np.empty((n, n), np.float32)
        self.flops = 0.0

    def sample(self, repeats=1):
        for _ in range(repeats):
            t = time.perf_counter()
            _native.sgemm(self._a, self._b, out=self._c)
            self.flops = max(self.flops, gemm_flops(self.n, self.n, self.n) / (time.perf_counter() - t))
        return self.flops


def blas_peak(n=2048, repeats=3):
    """The BLAS peak measured now (BlasPeak after one warm-up and ``repeats`` samples)."""
    p = BlasPeak(n)
    p.sample(1)
    p.flops = 0.0
    return p.sample(repeats)


def stated_peak(backend_name, blas_flops=None):
    """dict(flops, source) of the backend's stated peak: the measured BLAS peak on ref (pass it,
    or it is measured now), the chip's recorded peak on the ANE."""
    if backend_name == "ane":
        flops, source = chip_peak(ane.chip())
        return dict(flops=flops, source=source)
    flops = blas_flops if blas_flops is not None else blas_peak()
    return dict(flops=flops, source="best sgemm 2048^3 through anetrain's BLAS shim on the same threads, sampled "
                                    "through this run")


def impossible(seconds, flops=None, peak=None):
    """Why a measurement cannot be true ('' when it can): a time of zero or less (or not a
    number), or FLOP/s above the stated peak. ``seconds`` may be one time or several."""
    times = seconds if isinstance(seconds, (list, tuple)) else [seconds]
    for t in times:
        if t is None or not math.isfinite(t) or t <= 0:
            return f"time {t!r} s is not positive"
    if flops is not None and peak:
        rate = flops / min(times)
        if rate > peak:
            return f"{rate / 1e9:.1f} GFLOP/s exceeds the stated peak {peak / 1e9:.1f} GFLOP/s"
    return ""


def screen(results, peak):
    """Split result dicts (each with 'seconds': a time or list of times, and optionally 'flops')
    into (kept, flagged); each flagged result gets 'flag': the reason."""
    kept, flagged = [], []
    for r in results:
        why = impossible(r.get("seconds"), r.get("flops"), peak)
        if why:
            flagged.append(dict(r, flag=why))
        else:
            kept.append(r)
    return kept, flagged


# ------------------------------------------------------------------ the machine record


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or "unknown"


def machine_record(backend_name="ref"):
    """What every result records: machine, CPU model, cores, backend, BLAS and its core type, the
    chip and macOS version on a Mac, the versions of anetrain, Python and NumPy, the date and
    the load average at the start (a loaded VM shows here)."""
    info = dict(_native.build_info())
    rec = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=platform.node(),
        platform=platform.platform(),
        cpu=cpu_model(),
        cores=os.cpu_count(),
        threads=info["threads"],
        backend=backend_name,
        blas=info["blas"],
        blas_core=info["blas_core"],
        openblas_coretype=os.environ.get("OPENBLAS_CORETYPE", ""),
        simd=info["simd"],
        versions=dict(anetrain=__version__, python=platform.python_version(), numpy=np.__version__),
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    )
    if sys.platform == "darwin":
        rec["macos"] = platform.mac_ver()[0]
        rec["chip"] = ane.chip()
    return rec


def describe_machine(rec):
    """The record as the header line a suite prints."""
    line = (f"{rec['date']}  {rec['cpu']} ({rec['cores']} cores, {rec['threads']} threads)  backend {rec['backend']}  "
            f"BLAS core type {rec['blas_core']} (OPENBLAS_CORETYPE={rec['openblas_coretype'] or 'unset'})")
    if rec.get("chip"):
        line += f"  chip {rec['chip'].get('brand') or rec['chip'].get('family')}  macOS {rec.get('macos')}"
    if rec.get("load_average"):
        line += "  load " + " ".join(f"{x:.2f}" for x in rec["load_average"])
    return line


# ------------------------------------------------------------------ output


def write_json(path, payload):
    """Write ``payload`` as indented JSON (atomically), creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: f.write(json.dumps(payload, indent=2) + "\n"), binary=False)
    return path


def table(rows, columns):
    """Plain-text table: ``columns`` is [(header, key, format)], rows are dicts."""
    cells = [[format(r[k], f) if r.get(k) is not None else "-" for _, k, f in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot_series(path, title, xlabel, ylabel, series, logx=True, logy=True):
    """One PNG line chart: ``series`` is {label: [(x, y), ...]}. matplotlib is imported here, so
    the suites run without it unless --plot is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        points = sorted(points)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
