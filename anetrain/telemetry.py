"""Per-step telemetry (JSON lines), the FLOP model of a config, and the end-of-run efficiency report.

FLOP model (multiply and add counted as 2 FLOPs; per token, per training step):

- each layer's projections: 2 * (dim*q_dim [wq] + 2*dim*kv_dim [wk, wv] + q_dim*dim [wo]
  + 3*dim*hidden [w1, w2, w3])
- each layer's attention: 2*seq*q_dim for the scores Q.K^T plus 2*seq*q_dim for probs.V; the full
  seq x seq product is counted because the kernels compute it and mask, not a causal half
- the classifier: 2*dim*vocab
- backward = 2 x forward (gradients for the inputs and for the weights); training = 3 x forward.

Norms, RoPE, softmax, SwiGLU's elementwise work and the embedding lookup are not counted.

Besides the file, every record can go to sinks (``StepLog(..., sinks=[...])``): ``WandbSink`` logs
them to Weights & Biases for ``--wandb PROJECT``.
"""
import json
import os
import sys
import time

from . import rundir


def flops_per_token(cfg):
    """{'forward', 'backward', 'train'} FLOPs per token for a ModelConfig (see module docstring)."""
    proj = 2 * (cfg.dim * cfg.q_dim + 2 * cfg.dim * cfg.kv_dim + cfg.q_dim * cfg.dim
                + 3 * cfg.dim * cfg.hidden_dim)
    attn = 4 * cfg.seq_len * cfg.q_dim
    forward = cfg.n_layers * (proj + attn) + 2 * cfg.dim * cfg.vocab_size
    return {"forward": forward, "backward": 2 * forward, "train": 3 * forward}


# A step record's "ms" keys in the order people read them, with their names for people. dW's own
# time overlaps kernel evaluation, so only the wait for it is part of the step.
PHASES = {"kernels": "kernels", "io": "fp16 I/O", "cpu_ops": "CPU ops", "dw_wait": "dW wait",
          "optimizer": "optimizer", "compile": "compiles", "other": "other"}


def tokens_per_s(rec):
    """Training tokens per second of one step record."""
    return rec["tokens"] / rec["step_ms"] * 1e3 if rec["step_ms"] > 0 else 0.0


def step_record(step, loss, lr, grad_norm, timings_ms, tokens, train_flops_per_token, compiles=0, **extra):
    """One step's telemetry dict. ``timings_ms`` maps phase -> milliseconds; their sum is the step
    time from which TFLOPS (training FLOPs of ``tokens`` tokens per second / 1e12) is computed."""
    step_ms = float(sum(timings_ms.values()))
    tflops = tokens * train_flops_per_token / (step_ms / 1e3) / 1e12 if step_ms > 0 else 0.0
    rec = {"step": int(step), "loss": float(loss), "lr": float(lr), "grad_norm": float(grad_norm),
           "ms": {k: float(v) for k, v in timings_ms.items()}, "step_ms": step_ms,
           "tokens": int(tokens), "tflops": tflops, "compiles": int(compiles)}
    rec.update(extra)
    return rec


def format_step(rec):
    """The one-line human form of a step record."""
    return (f"step {rec['step']:6d} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e} | "
            f"gnorm {rec['grad_norm']:.3f} | {rec['step_ms']:.1f} ms | {rec['tflops']:.3f} TFLOPS | "
            f"compiles {rec['compiles']}")


class StepLog:
    """Appends one JSON object per line to ``path`` (flushed each write), optionally mirrored to
    ``stream`` (stderr by default) in human form and handed to each of ``sinks`` (objects with
    ``write(rec)`` and ``close()``, closed with the log)."""

    def __init__(self, path, mirror=False, stream=None, sinks=()):
        self.file = open(path, "a", encoding="utf-8")
        self.mirror = mirror
        self.stream = stream or sys.stderr
        self.sinks = list(sinks)

    def write(self, rec):
        rec = {"time": time.time(), **rec}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.mirror and "loss" in rec and "step_ms" in rec:
            print(format_step(rec), file=self.stream, flush=True)
        for sink in self.sinks:
            sink.write(rec)

    def close(self):
        if self.file.closed:
            return
        self.file.close()
        for sink in self.sinks:
            sink.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_log(path):
    """The records of a JSON-lines telemetry file, skipping a torn last line of a crashed run."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                break
    return out


def truncate_log(path, last_step):
    """Keep the records of ``path`` up to and including ``last_step`` (all records carry a step)
    and drop the rest, with a torn last line: a resume from the checkpoint at ``last_step`` re-runs
    the later steps and logs them again. The kept lines are copied byte for byte and replace the
    log atomically, so a crash meanwhile leaves the old log whole. Returns how many records were
    dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                dropped += 1
                break
            if rec.get("step", 0) <= last_step and line.endswith("\n"):
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        rundir.write_atomically(path, lambda f: f.writelines(kept), binary=False)
    return dropped


def efficiency(wall_s, compile_s, train_s, steps, tokens_per_step, train_flops_per_token):
    """End-of-run summary: time shares, ms per step and sustained TFLOPS (over training time and
    over wall time)."""
    flops = steps * tokens_per_step * train_flops_per_token
    return {
        "wall_s": wall_s, "compile_s": compile_s, "train_s": train_s,
        "other_s": max(0.0, wall_s - compile_s - train_s),
        "compile_share": compile_s / wall_s if wall_s > 0 else 0.0,
        "train_share": train_s / wall_s if wall_s > 0 else 0.0,
        "steps": steps, "ms_per_step": 1e3 * train_s / steps if steps else 0.0,
        "tflops_train": flops / train_s / 1e12 if train_s > 0 else 0.0,
        "tflops_wall": flops / wall_s / 1e12 if wall_s > 0 else 0.0,
    }


def format_report(e):
    """The efficiency summary as a few aligned lines."""
    return "\n".join([
        f"wall      {e['wall_s']:9.2f} s",
        f"compile   {e['compile_s']:9.2f} s  ({100 * e['compile_share']:.1f}%)",
        f"train     {e['train_s']:9.2f} s  ({100 * e['train_share']:.1f}%)",
        f"other     {e['other_s']:9.2f} s",
        f"steps     {e['steps']:9d}    {e['ms_per_step']:.1f} ms/step",
        f"sustained {e['tflops_train']:9.4f} TFLOPS over training time, "
        f"{e['tflops_wall']:.4f} over wall time",
    ])


def placement(placements, backend, ane_shaped):
    """Where the kernels run: dict(backend asked, programs shape, kernels {name: {"backend", "reason"}})
    from Model.placements(); reason is '' for a kernel that runs where asked."""
    return {"backend": backend, "programs": "ane-shaped" if ane_shaped else "split",
            "kernels": {k: {"backend": b, "reason": r} for k, b, r in placements}}


def placement_lines(p):
    """The placement as lines for people: one summary line, then one line per kernel that does not
    run where asked, saying why."""
    by = {}
    for name, k in p["kernels"].items():
        by.setdefault(k["backend"] + (" (fallback)" if k["reason"] else ""), []).append(name)
    where = "; ".join(f"{', '.join(names)} on {b}" for b, names in by.items())
    lines = [f"kernels ({p['programs']} programs): {where}"]
    lines += [f"  {name} runs on {k['backend']}, not {p['backend']}: {k['reason']}"
              for name, k in p["kernels"].items() if k["reason"]]
    return lines


def record_kind(rec):
    """"step" for a step record (they carry no type), else the record's type: placement, eval,
    sample, restart."""
    return rec.get("type", "step" if "loss" in rec else "")


def wandb_metrics(rec):
    """The numbers (and sample text) of one telemetry record as a flat dict for Weights & Biases,
    keyed by section ("train/loss", "time_ms/kernels", ...) and carrying the run's "step"; None for
    records with nothing to chart."""
    kind = record_kind(rec)
    if kind == "step":
        out = {"train/loss": rec["loss"], "train/lr": rec["lr"], "train/grad_norm": rec["grad_norm"],
               "perf/step_ms": rec["step_ms"], "perf/tokens_per_s": tokens_per_s(rec),
               "perf/tflops": rec["tflops"], "perf/compiles": rec["compiles"]}
        out.update({f"time_ms/{k}": v for k, v in rec["ms"].items()})
    elif kind == "eval":
        out = {"val/loss": rec["val_loss"]}
    elif kind == "sample":
        out = {"sample/text": rec["text"]}
    elif kind == "restart":
        out = {"run/restarts": rec["restarts"]}
    else:
        return None
    return {"step": rec["step"], **out}


class WandbSink:
    """Logs telemetry records to a Weights & Biases run of ``project``. ``run_id`` continues the
    W&B run of an earlier process of this training run (an exec() restart or --resume); a new one
    is made when it is empty. Records are charted against the training step (the "step" metric),
    so steps that a resume runs again are plotted where they belong."""

    def __init__(self, project, run_id, name, config):
        import wandb  # optional: TrainConfig.validate refuses --wandb when it is not installed

        self.run = wandb.init(project=project, id=run_id or None, resume="allow", name=name, config=config)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id = self.run.id

    def write(self, rec):
        if rec.get("type") == "placement":
            self.run.config.update({"placement": {k: v["backend"] for k, v in rec["kernels"].items()}},
                                   allow_val_change=True)
        metrics = wandb_metrics(rec)
        if metrics is not None:
            self.run.log(metrics)

    def close(self):
        self.run.finish()
