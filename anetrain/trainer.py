"""The training loop behind ``python scripts/train.py``.

One optimizer step = ``accum_steps`` micro-batches of ``batch_size`` windows through the native
trainer, then clipping and AdamW at the scheduled learning rate. Around it:

- the run directory (``--out``) belongs to one run: a lock held for the run's life (across
  restarts), a fresh run refused where another run's files are (``--overwrite`` archives them),
  temporary files of killed writers removed at start (anetrain/rundir.py);
- checkpoints every ``ckpt_interval`` steps, at the end, on Ctrl-C or SIGTERM (at the next step
  boundary) and before a restart; a full disk stops the run with the previous checkpoint intact; ``--resume`` restores weights, AdamW moments, the step, the data
  sampler's RNG and the loss history, so a resumed run's losses equal an uninterrupted run's, and
  drops the records metrics.jsonl holds past the checkpoint's step (those steps run again);
- the exec() restart: when the backend's compile budget (on the ANE 100 compiles per process by
  default, below the compiler's limit of about 119; ``--compile-budget`` on any backend) cannot
  fit the next step's compiles, checkpoint and ``os.execv`` the same command with ``--resume --ckpt``. A failing compile or evaluation gets one
  retry through a restart, then a clear error; a budget too small for a single step is an error;
- telemetry: a tqdm bar, JSON lines per step in ``<out>/metrics.jsonl``, validation loss and a
  generated sample at intervals, and an efficiency report at the end;
- a non-finite loss stops the run without writing a checkpoint, so the last good one is intact.
"""
import errno
import math
import os
import signal
import sys
import time

import numpy as np

from . import ane, backends, checkpoint, config, data, modelfile, rundir, telemetry
from ._native import BackendError, CompileBudgetExceeded
from .errors import AnetrainError, UsageError, exit_on_error
from .generation import BOS, generate, load_tokenizer
from .model import Model

RESTARTS_ENV = "ANETRAIN_RESTARTS"   # how many exec() restarts led to this process
RETRY_ENV = "ANETRAIN_RETRY_STEP"    # the step whose failure was already retried once
# the signals that stop a run at the next step boundary with a checkpoint, and the word the
# closing line uses for each
STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class RunFailed(Exception):
    """The run cannot go on (not a usage problem): printed as one line, exit status 1."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)

    def run_and_report():
        try:
            return run(argv)
        except RunFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    return exit_on_error(run_and_report)


def prepare_out_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        probe = rundir.temp_path(os.path.join(path, "write-test"))
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write to --out {path}: {e.strerror}; choose a writable directory")
    return path


def make_backend(train):
    try:
        return backends.new_backend(train.backend, compile_budget=train.compile_budget or None)
    except (BackendError, ValueError) as e:
        raise UsageError(f"backend {train.backend!r}: {e}")


class Run:
    """The state of one training run in this process."""

    def __init__(self, argv):
        self.argv = argv
        self.stop_signal = None  # SIGINT or SIGTERM once one asked the run to stop
        self.model_cfg, self.train = config.parse_args(argv, init_model=modelfile.read_config)
        t = self.train
        seq = self.model_cfg.seq_len
        # the inputs first: a run refused for its data or --init-from leaves no run directory behind
        splits = data.open_splits(t.data, self.model_cfg.vocab_size, seq, t.val_data, t.val_fraction)
        self.sampler = data.WindowSampler(splits.train, seq, t.seed)
        self.val = data.eval_windows(splits.val, seq, t.eval_windows)
        self.init_weights = self.read_init_weights() if t.init_from and not t.resume else None
        self.out = prepare_out_dir(t.out)
        self.lock = rundir.RunLock(self.out)
        rundir.remove_stale_temps(self.out)
        self.claim_out_dir()
        self.lock.record_pid()
        self.metrics_path = os.path.join(self.out, rundir.METRICS_NAME)
        self.backend = make_backend(t)
        try:
            self.model = Model(self.model_cfg.native_kwargs(), backend=self.backend, pipeline=t.pipeline,
                               loss_scale=t.loss_scale, seed=t.seed, ane_shaped=True if t.ane_shaped else None)
        except ValueError as e:  # what only this backend refuses, e.g. a seq_len the ANE cannot take
            raise UsageError(f"{e}; change the model settings or --backend")
        self.step = 0
        self.losses, self.val_losses = [], []
        self.cum = {"wall_s": 0.0, "compile_s": 0.0, "train_s": 0.0, "steps": 0}
        self.restarts = int(os.environ.get(RESTARTS_ENV, "0"))
        self.flops = telemetry.flops_per_token(self.model_cfg)["train"]
        self.tokens_per_step = t.batch_size * t.accum_steps * seq
        self.started = time.perf_counter()
        self.steps_here = 0

    # ---------------------------------------------------------------- the run directory
    def claim_out_dir(self):
        """A fresh run needs a directory without another run's files: their later checkpoints
        would outrank (and prune) this run's, and their metrics would mix with its own."""
        t = self.train
        if t.resume:
            return
        ckpts = checkpoint.list_checkpoints(self.out)
        files = rundir.run_files(self.out, ckpts)
        if not files:
            return
        if not t.overwrite:
            held = ", ".join(os.path.basename(f) for f in ([ckpts[-1]] if ckpts else []) + files[len(ckpts):])
            raise UsageError(f"--out {self.out} already holds another run ({held}); continue it with --resume, "
                             f"choose a new --out, or pass --overwrite to move it into "
                             f"{os.path.join(self.out, 'archive-<timestamp>')} and start afresh")
        dest = rundir.archive(self.out, files)
        print(f"moved the previous run's {len(files)} files into {dest}", file=sys.stderr)

    # ---------------------------------------------------------------- checkpoints
    def ckpt_meta(self, sampler_state):
        return {"config": self.model_cfg.to_dict(), "train": self.train.to_dict(), "step": self.step,
                "adam_step": self.model.step_count, "sampler": sampler_state, "losses": self.losses,
                "val_losses": self.val_losses, "cum": self.cumulative(), "restarts": self.restarts}

    def cumulative(self):
        c = dict(self.cum)
        c["wall_s"] += time.perf_counter() - self.started
        return c

    def save(self, sampler_state=None):
        path = checkpoint.step_path(self.out, self.step)
        previous = checkpoint.latest(self.out)
        arrays = self.model.state_dict(kinds=("weight", "m", "v"))
        try:
            checkpoint.save(path, arrays, self.ckpt_meta(sampler_state or self.sampler.state()),
                            keep_last=self.train.keep_last)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise RunFailed(f"the disk is full (writing {path}: {e.strerror}); the previous checkpoint "
                            f"{previous or '(none yet)'} is intact and nothing partial was left; free space "
                            f"and resume with --resume")
        return path

    def restore(self):
        t = self.train
        path = t.ckpt or checkpoint.latest(self.out)
        if path is None:
            print(f"note: no checkpoint in {self.out}; starting from scratch", file=sys.stderr)
            telemetry.truncate_log(self.metrics_path, -1)  # every logged step runs again
            return
        arrays, meta = checkpoint.load(path, expect_config=self.model_cfg.to_dict())
        try:
            self.model.load_state_dict(arrays)
        except (KeyError, ValueError) as e:
            raise AnetrainError(f"{path}: tensors do not fit the model ({e}); use a new --out")
        self.model.step_count = meta["adam_step"]
        self.sampler.set_state(meta["sampler"])
        self.step = int(meta["step"])
        self.losses = list(meta.get("losses", []))
        self.val_losses = list(meta.get("val_losses", []))
        self.cum = dict(meta.get("cum", self.cum))
        dropped = telemetry.truncate_log(self.metrics_path, self.step)
        print(f"resumed from {path} at step {self.step}", file=sys.stderr)
        if dropped:
            print(f"note: dropped {dropped} records after step {self.step} from {self.metrics_path}; "
                  f"those steps run again", file=sys.stderr)

    def read_init_weights(self):
        """The --init-from model's weights (a fresh run only); the run's model has its shape."""
        return modelfile.read(self.train.init_from)[1]

    def init_from_model(self):
        for name, value in self.init_weights.items():
            self.model.set(name, value)
        self.init_weights = None
        print(f"initialised from {self.train.init_from}", file=sys.stderr)

    # ---------------------------------------------------------------- restart
    def restart(self, reason, retry_step=None):
        path = self.save()
        env = dict(os.environ)
        env[RESTARTS_ENV] = str(self.restarts + 1)
        env.update(self.lock.handover())
        if retry_step is not None:
            env[RETRY_ENV] = str(retry_step)
        args = strip_resume_flags(self.argv) + ["--resume", "--ckpt", path]
        print(f"[restart after step {self.step}: {reason}; checkpoint {path}]", file=sys.stderr, flush=True)
        sys.stdout.flush()
        self.model.close()    # unload every program (on the ANE: and remove its model directory)
        ane.release_models()  # the new process image never unloads this one's programs
        # held back until the new image has its handlers (Run.run), instead of killing the process
        # in between: the signal mask and pending signals survive execve
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if self.stop_signal is not None:  # one already caught here: pend it again for the new image
            os.kill(os.getpid(), self.stop_signal)
        try:
            os.execve(sys.executable, [sys.executable] + interpreter_and_script(self.argv) + args, env)
        finally:  # only reached when the exec failed
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def ensure_budget(self):
        """Restart when the next step's compiles do not fit the remaining budget."""
        need, left = self.model.compiles_needed(), self.backend.remaining
        if left is None or need <= left:
            return
        if self.steps_here == 0:
            raise UsageError(f"the compile budget ({self.backend.budget}) cannot fit one {self.train.pipeline} step "
                             f"({need} compiles); raise --compile-budget or use --pipeline dynamic")
        self.restart(f"{need} compiles needed, {left} left in the budget")

    # ---------------------------------------------------------------- one step
    def train_step(self):
        t = self.train
        lr = config.lr_at(self.step, t)
        self.model.reset_timings()
        t0 = time.perf_counter()
        loss = 0.0
        for _ in range(t.accum_steps):
            loss += self.model.accumulate(self.sampler.batch(t.batch_size)) / t.accum_steps
        if not math.isfinite(loss):
            last = checkpoint.latest(self.out)
            raise RunFailed(f"loss became {loss} at step {self.step}; stopping without saving. The last good "
                            f"checkpoint is {last or '(none yet)'}; lower --lr or raise --grad-clip and resume")
        gnorm = self.model.update(lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, clip=t.grad_clip)
        elapsed = time.perf_counter() - t0
        tm = self.model.timings
        compile_s = tm["compile_ms"] / 1e3
        self.cum["compile_s"] += compile_s
        self.cum["train_s"] += elapsed - compile_s
        self.cum["steps"] += 1
        parts = {k[:-3]: v for k, v in tm.items() if k.endswith("_ms") and k not in ("total_ms", "dw_ms")}
        parts["other"] = max(0.0, elapsed * 1e3 - tm["total_ms"])
        return loss, lr, gnorm, parts, tm["compiles"]

    # ---------------------------------------------------------------- the loop
    def run(self):
        """Train to ``--steps``; a stop signal from here on (also while starting) ends the run at the
        next step boundary with a checkpoint."""
        previous = {s: signal.signal(s, self.on_stop_signal) for s in STOP_SIGNALS}
        # a restart blocks them across the exec (see restart); one that came meanwhile is delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            return self.train_loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def train_loop(self):
        t = self.train
        if t.resume:
            self.restore()
        elif t.init_from:
            self.init_from_model()
        if self.step >= t.steps:
            print(f"nothing to do: the run is already at step {self.step} of {t.steps}", file=sys.stderr)
            return 0
        tokenizer = load_tokenizer(t.tokenizer)
        print(f"anetrain: {self.model_cfg.name} ({self.model_cfg.n_params() / 1e6:.2f}M params), "
              f"{t.pipeline} pipeline on {self.backend.name}, {self.tokens_per_step} tokens/step, "
              f"out {self.out}", file=sys.stderr)
        placement = self.prepare_kernels()
        for line in telemetry.placement_lines(placement):
            print(line, file=sys.stderr)
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: it would be a thread with the stop signals unblocked

        bar = tqdm(total=t.steps, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr,
                   disable=None)
        log = telemetry.StepLog(self.metrics_path, mirror=t.log_stderr)
        log.write({"type": "placement", "step": self.step, **placement})
        try:
            if self.step == 0:
                self.evaluate(log, bar)  # the untrained model's validation loss: the baseline
            while self.step < t.steps and self.stop_signal is None:
                self.ensure_budget()
                sampler_state = self.sampler.state()
                try:
                    loss, lr, gnorm, parts, compiles = self.train_step()
                except CompileBudgetExceeded:
                    self.sampler.set_state(sampler_state)
                    self.restart("compile budget exhausted")
                except BackendError as e:
                    self.sampler.set_state(sampler_state)
                    if os.environ.get(RETRY_ENV) == str(self.step):
                        raise RunFailed(f"step {self.step} failed again after a restart: {e}")
                    self.restart(f"backend failure ({str(e).splitlines()[0]}), retrying once", self.step)
                self.step += 1
                self.steps_here += 1
                self.losses.append(loss)
                rec = telemetry.step_record(self.step, loss, lr, gnorm, parts, self.tokens_per_step, self.flops,
                                            compiles=self.backend.compiles)
                log.write(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", ms=f"{rec['step_ms']:.0f}",
                                tok_s=f"{self.tokens_per_step / rec['step_ms'] * 1e3:.0f}")
                self.periodic(log, bar, tokenizer)
        finally:
            bar.close()
            log.close()
        path = self.save()
        if self.stop_signal is not None:
            print(f"{STOP_SIGNALS[self.stop_signal]}: saved {path} at step {self.step}; resume with --resume",
                  file=sys.stderr)
            return 128 + self.stop_signal  # the shell's status for death by that signal
        e = telemetry.efficiency(**{k: self.cumulative()[k] for k in ("wall_s", "compile_s", "train_s", "steps")},
                                 tokens_per_step=self.tokens_per_step, train_flops_per_token=self.flops)
        print(f"done: step {self.step}, final loss {self.losses[-1]:.4f}, checkpoint {path}", file=sys.stderr)
        print(telemetry.format_report(e), file=sys.stderr)
        print(telemetry.placement_lines(placement)[0], file=sys.stderr)
        return 0

    def prepare_kernels(self):
        """Compile the first step's kernels now, so a kernel that cannot run where asked stops the
        run before it starts; returns where each kernel runs (telemetry.placement)."""
        self.ensure_budget()
        self.model.reset_timings()
        try:
            self.model.prepare()
        except CompileBudgetExceeded:
            raise
        except BackendError as e:
            raise RunFailed(f"the {self.train.pipeline} pipeline's kernels cannot run on {self.backend.name}: "
                            f"{str(e).splitlines()[0]}")
        self.cum["compile_s"] += self.model.timings["compile_ms"] / 1e3
        return telemetry.placement(self.model.placements(), self.backend.name, self.model.ane_shaped)

    def evaluate(self, log, bar):
        if not (self.train.eval_interval and len(self.val)):
            return
        v = validation_loss(self.model, self.val)
        self.val_losses.append([self.step, v])
        log.write({"type": "eval", "step": self.step, "val_loss": v})
        bar.write(f"step {self.step}: val loss {v:.4f}", file=sys.stderr)

    def periodic(self, log, bar, tokenizer):
        t, s = self.train, self.step
        last = s == t.steps
        if t.eval_interval and (s % t.eval_interval == 0 or last):
            self.evaluate(log, bar)
        if t.sample_interval and (s % t.sample_interval == 0 or last) and tokenizer is not None:
            ids = list(generate(self.model, [BOS], max_tokens=t.sample_tokens, temperature=0.8, top_k=50, top_p=1.0,
                                seed=s))
            text = tokenizer.decode(ids)
            log.write({"type": "sample", "step": s, "text": text})
            bar.write(f"step {s} sample: {text}", file=sys.stderr)
        if t.ckpt_interval and s % t.ckpt_interval == 0 and not last:
            self.save()

    def on_stop_signal(self, signum, frame):
        if self.stop_signal is not None:  # asked twice: stop now, without saving
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.stop_signal = signum
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{what}: finishing this step and saving a checkpoint ({what} again to stop without saving)",
              file=sys.stderr)


def validation_loss(model, windows, chunk=4):
    """Mean cross-entropy of ``model`` on int32 windows [n, seq_len + 1] (no gradients)."""
    if len(windows) == 0:
        return float("nan")
    total, count = 0.0, 0
    for i in range(0, len(windows), chunk):
        w = windows[i:i + chunk]
        logits = model.forward(w[:, :-1]).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        tgt = w[:, 1:]
        total += -np.take_along_axis(logp, tgt[..., None], axis=-1).sum()
        count += tgt.size
    return total / count


def interpreter_and_script(argv):
    """What came before the training arguments on this process's command line (interpreter
    options and the script, e.g. ["-X", "dev", "scripts/train.py"]), so a restart runs the same."""
    orig = getattr(sys, "orig_argv", None)
    n = len(argv)
    if orig and len(orig) > n and orig[len(orig) - n:] == list(argv):
        return orig[1:len(orig) - n]
    return [sys.argv[0]]


def strip_resume_flags(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--resume" or a.startswith("--ckpt="):
            continue
        if a == "--ckpt":
            skip = True
            continue
        out.append(a)
    return out


def run(argv):
    r = Run(argv)
    try:
        return r.run()
    finally:
        r.lock.release()
