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
- telemetry: a tqdm bar, JSON lines per step in ``<out>/metrics.jsonl`` (also to Weights & Biases
  with ``--wandb``), validation loss and a generated sample at intervals, a record of each exec()
  restart, and at the end an efficiency report and ``<out>/report.png`` (anetrain/dashboard.py);
- a non-finite loss stops the run without writing a checkpoint, so the last good one is intact;
- data parallel under torchrun (anetrain/distributed.py, docs/distributed.md): every rank runs this
  loop on its own windows, the ranks agree at each step boundary on stopping and restarting,
  rank 0 alone writes to ``--out``, and checkpoints hold every rank's sampler state.
"""
import errno
import math
import os
import signal
import sys
import time

import numpy as np

from . import ane, backends, checkpoint, config, dashboard, data, distributed, modelfile, rundir, telemetry
from . import tokenizer as tokenizers
from ._native import BackendError, CompileBudgetExceeded
from .errors import AnetrainError, RunFailed, UsageError, exit_on_error, print_error
from .generation import generate
from .model import Model

RESTARTS_ENV = "ANETRAIN_RESTARTS"   # how many exec() restarts led to this process
RETRY_ENV = "ANETRAIN_RETRY_STEP"    # the step whose failure was already retried once
# the signals that stop a run at the next step boundary with a checkpoint, and the word the
# closing line uses for each
STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)

    def run_and_report():
        try:
            return run(argv)
        except RunFailed as e:
            print_error(e)
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
        self.tokenizer = None    # for samples, once the run starts
        self.model_cfg, self.train = config.parse_args(argv, init_model=modelfile.read_config)
        self.restarts = int(os.environ.get(RESTARTS_ENV, "0"))
        self.dist = distributed.setup(self.train.dist_timeout, self.restarts, overlap=self.train.allreduce == "overlap")
        self.dist.start(self.open, distributed.shared_settings(self.model_cfg, self.train))

    def open(self):
        """This rank's start: data, run directory (rank 0), backend and model."""
        t = self.train
        seq = self.model_cfg.seq_len
        # the inputs first: a run refused for its data or --init-from leaves no run directory behind
        splits = data.open_splits(t.data, self.model_cfg.vocab_size, seq, t.val_data, t.val_fraction)
        self.sampler = data.WindowSampler(splits.train, seq, t.seed, self.dist.rank, self.dist.world)
        self.val = data.eval_windows(splits.val, seq, t.eval_windows)
        self.init_weights = self.read_init_weights() if t.init_from and not t.resume else None
        self.out, self.lock = t.out, None
        if self.dist.is_main:  # the other ranks write nothing to --out
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
        self.log = None       # the StepLog while the loop runs
        self.wandb_id = ""    # the Weights & Biases run this run logs to (--wandb), kept in checkpoints
        self.losses, self.val_losses = [], []
        self.cum = {"wall_s": 0.0, "compile_s": 0.0, "train_s": 0.0, "steps": 0}
        self.flops = telemetry.flops_per_token(self.model_cfg)["train"]
        self.tokens_per_step = self.dist.world * t.batch_size * t.accum_steps * seq
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
    def ckpt_meta(self, sampler_states):
        return {"config": self.model_cfg.to_dict(), "train": self.train.to_dict(), "step": self.step,
                "adam_step": self.model.step_count, "sampler": sampler_states, "world_size": self.dist.world,
                "losses": self.losses, "val_losses": self.val_losses, "cum": self.cumulative(),
                "restarts": self.restarts, "wandb_id": self.wandb_id}

    def cumulative(self):
        c = dict(self.cum)
        c["wall_s"] += time.perf_counter() - self.started
        return c

    def save(self, sampler_state=None):
        """Write a checkpoint (every rank calls this at the same step; rank 0 writes, the others
        return None)."""
        sampler_states = self.dist.gather(sampler_state or self.sampler.state())
        if not self.dist.is_main:
            return None
        path = checkpoint.step_path(self.out, self.step)
        previous = checkpoint.latest(self.out)
        arrays = self.model.state_dict(kinds=("weight", "m", "v"))
        try:
            checkpoint.save(path, arrays, self.ckpt_meta(sampler_states), keep_last=self.train.keep_last)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise RunFailed(f"the disk is full (writing {path}: {e.strerror}); the previous checkpoint "
                            f"{previous or '(none yet)'} is intact and nothing partial was left; free space "
                            f"and resume with --resume")
        return path

    def restore(self):
        meta = self.dist.on_main(self.read_checkpoint)  # rank 0 reads it; the others get its state
        if meta is None:
            return
        self.dist.share_state(self.model, ("weight", "m", "v"))
        self.model.step_count = meta["adam_step"]
        self.step = int(meta["step"])
        self.losses = list(meta.get("losses", []))
        self.val_losses = list(meta.get("val_losses", []))
        self.cum = dict(meta.get("cum", self.cum))
        self.wandb_id = meta.get("wandb_id", "")
        states = meta["sampler"] if isinstance(meta["sampler"], list) else [meta["sampler"]]  # (dict: before lists)
        if len(states) == self.dist.world:
            self.sampler.set_state(states[self.dist.rank])
        else:  # --reshard (read_checkpoint refused it otherwise): new windows from here on, a stream per rank
            s = self.sampler
            self.sampler = data.WindowSampler(s.parts, s.seq_len, self.train.seed, s.rank, s.world, stream=self.step)
        if self.dist.is_main:
            self.set_aside_later_checkpoints()

    def read_checkpoint(self):
        """Rank 0: load the checkpoint into the model; its meta, or None when there is none."""
        t = self.train
        path = t.ckpt or checkpoint.latest(self.out)
        if path is None:
            print(f"note: no checkpoint in {self.out}; starting from scratch", file=sys.stderr)
            telemetry.truncate_log(self.metrics_path, -1)  # every logged step runs again
            return None
        arrays, meta = checkpoint.load(path, expect_config=self.model_cfg.to_dict())
        saved, world = meta.get("world_size", 1), self.dist.world
        if saved != world and not t.reshard:
            raise UsageError(f"{path} was written by a run of {saved} rank{'s' * (saved > 1)} and this run has "
                             f"{world}; resume with {saved} rank{'s' * (saved > 1)} (torchrun's --nproc-per-node "
                             f"times --nnodes), or pass --reshard to go on with {world} (each rank then draws new "
                             f"windows; docs/distributed.md)")
        try:
            self.model.load_state_dict(arrays)
        except (KeyError, ValueError) as e:
            raise AnetrainError(f"{path}: tensors do not fit the model ({e}); use a new --out")
        dropped = telemetry.truncate_log(self.metrics_path, int(meta["step"]))
        print(f"resumed from {path} at step {meta['step']}", file=sys.stderr)
        if saved != world:
            print(f"note: resharded from {saved} to {world} ranks: the ranks draw new windows from step "
                  f"{meta['step']} on", file=sys.stderr)
        if dropped:
            print(f"note: dropped {dropped} records after step {meta['step']} from {self.metrics_path}; "
                  f"those steps run again", file=sys.stderr)
        return meta

    def set_aside_later_checkpoints(self):
        """After resuming from an older checkpoint (--ckpt), the checkpoints past its step belong to
        the run this one replaces: left in place they would outrank the new run's own (the next
        --resume, keep-last pruning). They move to an archive, as --overwrite moves a whole run."""
        later = [p for p in checkpoint.list_checkpoints(self.out) if (checkpoint.step_of(p) or 0) > self.step]
        if later:
            dest = rundir.archive(self.out, later)
            print(f"note: moved {len(later)} checkpoint(s) past step {self.step} (of the run resumed from an "
                  f"earlier point) to {dest}", file=sys.stderr)

    def read_init_weights(self):
        """The --init-from model's weights (a fresh run only); the run's model has its shape."""
        return modelfile.read(self.train.init_from)[1]

    def init_from_model(self):
        for name, value in self.init_weights.items():
            self.model.set(name, value)
        self.init_weights = None
        self.say(f"initialised from {self.train.init_from}")

    # ---------------------------------------------------------------- restart
    def restart(self, reason, retry_step=None):
        path = self.save()
        env = dict(os.environ)
        env[RESTARTS_ENV] = str(self.restarts + 1)
        if self.lock:
            env.update(self.lock.handover())
        if retry_step is not None:
            env[RETRY_ENV] = str(retry_step)
        # rank 0 reads the checkpoint and sends the others its state (restore)
        args = strip_resume_flags(self.argv) + ["--resume"] + (["--ckpt", path] if path else [])
        if self.dist.is_main:
            print(f"[restart after step {self.step}: {reason}; checkpoint {path}]", file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.write({"type": "restart", "step": self.step, "reason": reason, "restarts": self.restarts + 1})
            self.log.close()
        sys.stdout.flush()
        self.model.close()    # unload every program (on the ANE: and remove its model directory)
        ane.release_models()  # the new process image never unloads this one's programs
        self.dist.close()     # every rank restarts here; the new images form a new group
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
        """Restart when the next step's compiles, and those of the evaluation due after it, do not
        fit the remaining budget (of any rank: the ranks restart together). Samples come from the
        CPU decoder, which compiles nothing."""
        left = self.backend.remaining
        need = self.model.compiles_needed()
        if self.eval_due(self.step + 1):
            need += self.model.compiles_after_update()
        short = left is not None and need > left
        if not self.dist.any(short):
            return
        if self.steps_here == 0:
            budget = f"compile budget ({self.backend.budget})" if short else "compile budget of another rank"
            raise UsageError(f"the {budget} cannot fit one {self.train.pipeline} step and the evaluation after "
                             f"it ({need} compiles); raise --compile-budget or use --pipeline dynamic")
        self.restart(f"{need} compiles needed, {left} left in the budget" if short
                     else "another rank's compile budget is spent")

    # ---------------------------------------------------------------- one step
    def train_step(self):
        t = self.train
        lr = config.lr_at(self.step, t)
        self.model.reset_timings()
        t0 = time.perf_counter()
        loss, failure = 0.0, None
        reduction = self.dist.gradient_step(self.model)  # data parallel: sums the ranks' gradients
        try:
            for i in range(t.accum_steps):
                ready = reduction.ready if i == t.accum_steps - 1 else None
                loss += self.model.accumulate(self.sampler.batch(t.batch_size), grads_ready=ready) / t.accum_steps
        except (CompileBudgetExceeded, BackendError) as e:
            failure = e
        loss = reduction.finish(loss, failure)  # the mean over ranks; any rank's failure raised on all
        if not math.isfinite(loss):
            raise RunFailed(f"loss became {loss} at step {self.step}; stopping without saving. The last good "
                            f"checkpoint is {self.last_checkpoint()}; lower --lr or raise --grad-clip and resume")
        gnorm = self.model.update(lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, clip=t.grad_clip,
                                  sequences=self.dist.world * t.batch_size * t.accum_steps)
        elapsed = time.perf_counter() - t0
        tm = self.model.timings
        compile_s = tm["compile_ms"] / 1e3
        self.cum["compile_s"] += compile_s
        self.cum["train_s"] += elapsed - compile_s
        self.cum["steps"] += 1
        parts = {k[:-3]: v for k, v in tm.items() if k.endswith("_ms") and k not in ("total_ms", "dw_ms")}
        comm = reduction.record()
        if comm:  # the wait for the reduction after the backward pass is the step's; the hidden part is not
            parts["allreduce"] = reduction.exposed_ms
        parts["other"] = max(0.0, elapsed * 1e3 - tm["total_ms"] - parts.get("allreduce", 0.0))
        return loss, lr, gnorm, parts, tm["compiles"], comm

    # ---------------------------------------------------------------- the loop
    def run(self):
        """Train to ``--steps``; a stop signal from here on (also while starting) ends the run at the
        next step boundary with a checkpoint."""
        previous = {s: signal.signal(s, self.on_stop_signal) for s in STOP_SIGNALS}
        # a restart blocks them across the exec (see restart); one that came meanwhile is delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            return self.train_loop()
        except distributed.GroupFailed as e:
            # torchrun now stops the other ranks with SIGTERM: nothing left to save, only to say why
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            raise RunFailed(f"{e}. The last checkpoint {self.last_checkpoint()} is intact; resume with --resume "
                            f"once every rank can run") from None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def train_loop(self):
        t = self.train
        if t.resume:
            self.restore()
        else:
            if t.init_from:
                self.init_from_model()
            self.dist.share_state(self.model, ("weight",))  # data parallel: rank 0's, however the others started
        if self.step >= t.steps:
            self.say(f"nothing to do: the run is already at step {self.step} of {t.steps}")
            return 0
        tokenizer = self.tokenizer = load_tokenizer(t.tokenizer) if self.dist.is_main else None
        self.say(f"anetrain: {self.model_cfg.name} ({self.model_cfg.n_params() / 1e6:.2f}M params), "
                 f"{t.pipeline} pipeline on {self.backend.name}, {self.tokens_per_step} tokens/step, out {self.out}")
        if self.dist.describe():
            self.say(self.dist.describe())
        placement = self.prepare_kernels()
        for line in telemetry.placement_lines(placement):
            self.say(line)
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: it would be a thread with the stop signals unblocked

        bar = tqdm(total=t.steps, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr,
                   disable=None if self.dist.is_main else True)
        log = self.log = (telemetry.StepLog(self.metrics_path, mirror=t.log_stderr, sinks=self.sinks())
                          if self.dist.is_main else telemetry.StepLog(os.devnull))
        log.write({"type": "placement", "step": self.step, **placement, "run": {
            "model": self.model_cfg.name, "params": self.model_cfg.n_params(), "pipeline": t.pipeline,
            "backend": self.backend.name, "steps": t.steps}})
        try:
            if self.step == 0:
                self.evaluate(log, bar)  # the untrained model's validation loss: the baseline
            while self.step < t.steps and not self.stopping():
                self.ensure_budget()
                sampler_state = self.sampler.state()
                try:
                    loss, lr, gnorm, parts, compiles, comm = self.train_step()
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
                                            compiles=self.backend.compiles, **comm)
                log.write(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", ms=f"{rec['step_ms']:.0f}",
                                tok_s=f"{telemetry.tokens_per_s(rec):.0f}")
                self.periodic(log, bar, tokenizer)
        finally:
            bar.close()
            log.close()
            self.log = None
        path = self.save()
        if not self.train.no_report and self.dist.is_main:
            self.write_report()
        if self.stop_signal is not None:
            self.say(f"{STOP_SIGNALS[self.stop_signal]}: saved {path} at step {self.step}; resume with --resume")
            return 128 + self.stop_signal  # the shell's status for death by that signal
        e = telemetry.efficiency(**{k: self.cumulative()[k] for k in ("wall_s", "compile_s", "train_s", "steps")},
                                 tokens_per_step=self.tokens_per_step, train_flops_per_token=self.flops)
        self.say(f"done: step {self.step}, final loss {self.losses[-1]:.4f}, checkpoint {path}")
        self.say(telemetry.format_report(e))
        self.say(telemetry.placement_lines(placement)[0])
        return 0

    def say(self, text):
        """A progress line for the user, from rank 0 only."""
        if self.dist.is_main:
            print(text, file=sys.stderr)

    def stopping(self):
        """Whether a stop signal ends the run at this step boundary (data parallel: one that
        reached any rank; all stop at the same step)."""
        self.stop_signal = self.dist.stop_signal(self.stop_signal)
        return self.stop_signal is not None

    def last_checkpoint(self):
        if not self.dist.is_main:
            return "(rank 0's)"
        return checkpoint.latest(self.out) or "(none yet)"

    def sinks(self):
        """Where records go besides metrics.jsonl: Weights & Biases with --wandb."""
        if not self.train.wandb:
            return []
        try:
            sink = telemetry.WandbSink(self.train.wandb, self.wandb_id,
                                       name=os.path.basename(os.path.abspath(self.out)),
                                       config={"model": self.model_cfg.to_dict(), "train": self.train.to_dict()})
        except Exception as e:  # noqa: BLE001 (wandb's own errors: not logged in, no network, ...)
            why = str(e).strip().split("\n")[0]
            raise RunFailed(f"--wandb {self.train.wandb}: {type(e).__name__}: {why}; check `wandb login`, "
                            f"or drop --wandb")
        self.wandb_id = sink.id
        return [sink]

    def write_report(self):
        """<out>/report.png from metrics.jsonl. The run's results are saved by now, so a report
        that cannot be drawn is a warning, not a failed run."""
        path = os.path.join(self.out, rundir.REPORT_NAME)
        try:
            dashboard.write_report(self.out, path)
        except Exception as e:  # noqa: BLE001 (whatever plotting raises)
            print(f"warning: no {path}: {type(e).__name__}: {e}", file=sys.stderr)
            return
        print(f"report: {path}", file=sys.stderr)

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
        if not (self.train.eval_interval and len(self.val) and self.dist.is_main):
            return
        v = validation_loss(self.model, self.val)
        self.val_losses.append([self.step, v])
        log.write({"type": "eval", "step": self.step, "val_loss": v})
        bar.write(f"step {self.step}: val loss {v:.4f}", file=sys.stderr)

    def eval_due(self, s):
        t = self.train
        return bool(t.eval_interval and len(self.val) and self.dist.is_main) and (
            s % t.eval_interval == 0 or s == t.steps)

    def sample_due(self, s):
        t = self.train
        return bool(t.sample_interval and self.tokenizer is not None) and (s % t.sample_interval == 0 or s == t.steps)

    def periodic(self, log, bar, tokenizer):
        t, s = self.train, self.step
        last = s == t.steps
        if self.eval_due(s):
            self.evaluate(log, bar)
        if t.sync_check and s % t.sync_check == 0:  # before a checkpoint could keep drifted weights
            self.dist.check_sync(self.model, s)
        if self.sample_due(s):
            ids = list(generate(self.model, [tokenizer.doc_start], max_tokens=t.sample_tokens, temperature=0.8,
                                top_k=50, top_p=1.0, seed=s, stop_at_eos=bool(tokenizer.stop), eos_id=tokenizer.stop))
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
        self.say(f"\n{what}: finishing this step and saving a checkpoint ({what} again to stop without saving)")


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


def load_tokenizer(path):
    """The samples' tokenizer (anetrain.tokenizer), or None without one."""
    if not path or not os.path.exists(path):
        return None
    return tokenizers.load(path)


def run(argv):
    r = Run(argv)
    try:
        return r.run()
    finally:
        if r.lock:
            r.lock.release()
        r.dist.close()
