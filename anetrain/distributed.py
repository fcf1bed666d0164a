"""Data-parallel training on torch.distributed's gloo backend, for runs that torchrun launches.

    torchrun --nproc-per-node 2 scripts/train.py --preset stories15M ...

torchrun starts one process per rank with RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in its environment. ``setup`` sees WORLD_SIZE and joins a gloo process group (CPU
tensors over TCP, on macOS and Linux). Without WORLD_SIZE nothing here imports torch, and
``Single`` stands in: its methods do nothing, so the trainer calls the same methods either way.
docs/distributed.md is the user's guide.

One optimizer step on every rank:

1. At the step boundary the ranks agree (small all-reduces): a stop signal on any rank stops
   them all at this step, and a compile budget that cannot fit the next step on any rank
   restarts them all (every rank exec()s itself; see the trainer).
2. Each rank accumulates over its own windows (data.WindowSampler's share for its rank). The
   gradient sums are all-reduced (summed) in place in the native buffer, through
   torch.from_numpy over Model.flat("grad"), without a copy: once after the backward pass, or
   (``overlap``) per layer while the backward pass goes on with earlier layers.
3. One small all-reduce sums the ranks' losses and failures: the loss reported is the mean over
   all ranks, and a step that failed on any rank restarts every rank.
4. update() divides by every rank's sequences, so all ranks clip and apply one and the same
   AdamW update to identical weights.

The gradient of a step is, per element, the fp32 sum over ranks of each rank's own sum (two
ranks: exactly G0 + G1). One process gets the same numbers when it computes each rank's
micro-batch gradient from zero and adds them in rank order; tests/test_distributed.py does that.

Rank 0 alone writes to --out. Checkpoints hold every rank's sampler state (gathered to rank 0)
and the world size; on resume rank 0 reads the checkpoint and sends the others its weights, AdamW
moments and their sampler states. Every collective runs under the group's timeout; one that
fails or times out (a rank died or hangs, the network failed) raises GroupFailed.
"""
import datetime
import hashlib
import os
import re
import signal
import time

import numpy as np

from . import set_num_threads
from ._native import BackendError, CompileBudgetExceeded
from .errors import AnetrainError, RunFailed, UsageError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what a rank needs
# everything torchrun sets that a process might mistake for a launch of its own
LAUNCH_ENV = ENV + ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RESTART_COUNT",
                    "TORCHELASTIC_USE_AGENT_STORE")
# Settings that may differ between ranks: paths on each machine, and what only rank 0 uses.
LOCAL_SETTINGS = ("data", "val_data", "tokenizer", "out", "ckpt", "init_from", "log_stderr", "no_report", "wandb")


class GroupFailed(RunFailed):
    """A collective failed or timed out: a rank died or hangs, or the network failed."""


def launched():
    """Whether torchrun (or a launcher like it) started this process as one rank of a group."""
    return "WORLD_SIZE" in os.environ


def setup(timeout_s, incarnation, overlap=False):
    """The process group this process belongs to: a gloo Group under torchrun, else Single().
    ``incarnation`` counts the exec() restarts before this process image (the same on every
    rank, since they restart together)."""
    if not launched():
        return Single()
    missing = [v for v in ENV if not os.environ.get(v)]
    if missing:
        raise UsageError(f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; "
                         f"start data-parallel runs with torchrun (docs/distributed.md), or unset WORLD_SIZE")
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise UsageError("torchrun started this run (WORLD_SIZE is set) but PyTorch is not installed; install it "
                         "on every machine with pip install 'anetrain[distributed]' (or pip install torch)") from None
    return Group(torch, dist, timeout_s, incarnation, overlap)


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_rank(local_world):
    """This machine's cores shared among the ranks it runs."""
    return max(1, cores() // max(1, local_world))


def shared_settings(model_cfg, train):
    """The settings every rank must run with, by the name a user knows them by."""
    s = {f"model {k}": v for k, v in model_cfg.to_dict().items()}
    s.update({"--" + k.replace("_", "-"): v for k, v in train.to_dict().items() if k not in LOCAL_SETTINGS})
    return s


def settings_mismatch(every):
    """For every rank's shared_settings, the message naming the first rank whose settings differ
    from rank 0's, and how; None when all agree."""
    ours = every[0]
    for r, theirs in enumerate(every[1:], start=1):
        diff = [f"{k} {theirs.get(k)!r} vs {v!r}" for k, v in ours.items() if theirs.get(k) != v]
        if diff:
            return (f"rank {r} runs with other settings than rank 0 ({'; '.join(diff)}); start every rank with "
                    f"the same settings")
    return None


def short(error):
    """The gist of a torch.distributed / gloo error: its first line without the source location
    gloo puts in front or the advice it appends."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^(\[[^\]]*\]\s*)+", "", text)
    return text.split(" This is typically caused")[0].rstrip(".")


def weight_checksums(model):
    """[(name, float64 sum, hash of the bytes)] of every weight tensor."""
    out = []
    for name in model.names():
        w = model.get(name)
        out.append((name, float(w.sum(dtype=np.float64)), hashlib.blake2b(w.tobytes(), digest_size=8).hexdigest()))
    return out


def sync_mismatch(checksums, step):
    """The message naming the first tensor whose checksum differs from rank 0's, and the ranks,
    for every rank's weight_checksums; None when all agree."""
    bad = []
    for rank, theirs in enumerate(checksums[1:], start=1):
        for (name, s0, h0), (_, s, h) in zip(checksums[0], theirs):
            if h != h0:
                bad.append((name, rank, s0, s))
    if not bad:
        return None
    name, _, s0, _ = bad[0]
    ranks = sorted({r for n, r, _, _ in bad if n == name})
    sums = ", ".join(f"rank {r} {s!r}" for n, r, _, s in bad if n == name)
    more = len({n for n, _, _, _ in bad}) - 1
    return (f"the weights differ across ranks after step {step}: {name} on rank{'s' if len(ranks) > 1 else ''} "
            f"{', '.join(map(str, ranks))} is not rank 0's (sum rank 0 {s0!r}, {sums})"
            f"{f' and {more} more tensors differ' if more else ''}; the ranks no longer train one model. Run the "
            f"same anetrain build on every machine, then resume from the last checkpoint")


class Single:
    """One process: nothing to agree on, share or reduce."""
    rank, world, local_world, is_main = 0, 1, 1, True

    def describe(self):
        return None

    def start(self, open_run, settings):
        open_run()

    def on_main(self, fn):
        return fn()

    def any(self, flag):
        return bool(flag)

    def stop_signal(self, signum):
        return signum

    def share_state(self, model, kinds):
        pass

    def gather(self, obj):
        return [obj]

    def gradient_step(self, model):
        return _SingleStep()

    def check_sync(self, model, step):
        pass

    def close(self):
        pass


class _SingleStep:
    ready = None

    def finish(self, loss, failure):
        if failure is not None:
            raise failure
        return loss

    def record(self):
        return {}


class Group:
    """This process as one rank of a gloo process group (see the module docstring)."""

    def __init__(self, torch, dist, timeout_s, incarnation, overlap):
        self.torch, self.dist = torch, dist
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.overlap = overlap
        self.where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        self.threads = None
        if not os.environ.get("ANETRAIN_NUM_THREADS"):  # an explicit count wins
            self.threads = threads_per_rank(self.local_world)
            set_num_threads(self.threads)
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
            # After an exec() restart (incarnation) or a restart of the whole group by torchrun
            # --max-restarts, the new processes join under a fresh prefix: the store may still
            # hold the previous group's keys, and a peer could read those stale addresses.
            group = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"anetrain/{group}/{incarnation}", store)
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world, timeout=timeout)
        except (RuntimeError, ValueError) as e:
            raise GroupFailed(f"rank {self.rank} could not join the process group at {self.where} within "
                              f"{timeout_s:g} s ({short(e)}); check that every rank was started, that the address "
                              f"and port are reachable and that the firewall lets them through") from None
        self._grads = None

    def describe(self):
        threads = (f"{self.threads} thread{'s' * (self.threads > 1)} per rank" if self.threads
                   else "ANETRAIN_NUM_THREADS threads per rank")
        how = "per layer during the backward pass" if self.overlap else "after the backward pass"
        return (f"data parallel: {self.world} ranks ({self.local_world} on this machine), gloo via {self.where}, "
                f"{threads}, gradients all-reduced {how}")

    def collective(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # gloo's errors, DistBackendError among them
            raise GroupFailed(f"rank {self.rank}: lost the other ranks in {what} ({short(e)}); a rank died or "
                              f"hangs, or the network failed") from None

    # ---------------------------------------------------------------- start-up
    def start(self, open_run, settings):
        """Run ``open_run`` (the rank's own start-up) and check with the others: a rank that could
        not start, or settings that differ from rank 0's, stop every rank with one line."""
        error = None
        try:
            open_run()
        except AnetrainError as e:
            error = e
        every = [None] * self.world
        self.collective("the start-up check", self.dist.all_gather_object, every,
                        (settings, None if error is None else str(error)))
        if error is not None:
            raise error
        for r, (_, message) in enumerate(every):
            if message is not None:
                raise UsageError(f"rank {r} could not start: {message}")
        message = settings_mismatch([settings for settings, _ in every])
        if message:
            raise UsageError(message)

    def on_main(self, fn):
        """fn() on rank 0; its result (or the AnetrainError it raised) on every rank."""
        box = [None]
        if self.is_main:
            try:
                box[0] = (True, fn())
            except AnetrainError as e:
                box[0] = (False, e)
        self.collective("the exchange with rank 0", self.dist.broadcast_object_list, box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def share_state(self, model, kinds):
        """Rank 0's tensors of each kind ("weight", "m", "v") on every rank."""
        names = model.names()
        for kind in kinds:
            arrays = [model.get(n, kind) for n in names]
            flat = np.concatenate([a.ravel() for a in arrays])
            self.collective(f"the broadcast of rank 0's {kind} tensors", self.dist.broadcast,
                            self.torch.from_numpy(flat), src=0)
            if self.is_main:
                continue
            at = 0
            for n, a in zip(names, arrays):
                model.set(n, flat[at:at + a.size].reshape(a.shape), kind)
                at += a.size

    # ---------------------------------------------------------------- per step
    def any(self, flag):
        """Whether ``flag`` holds on any rank."""
        t = self.torch.tensor([1.0 if flag else 0.0], dtype=self.torch.float64)
        self.collective("the check at the step boundary", self.dist.all_reduce, t)
        return bool(t.item() > 0)

    def stop_signal(self, signum):
        """The signal that stops the group at this step boundary: SIGTERM when any rank got one,
        else SIGINT when any rank got that, else None."""
        t = self.torch.tensor([float(signum or 0)], dtype=self.torch.float64)
        self.collective("the check at the step boundary", self.dist.all_reduce, t, op=self.dist.ReduceOp.MAX)
        return signal.Signals(int(t.item())) if t.item() else None

    def gather(self, obj):
        """Every rank's ``obj`` by rank, on rank 0 (None on the others)."""
        out = [None] * self.world if self.is_main else None
        self.collective("the gathering of sampler states", self.dist.gather_object, obj, out, dst=0)
        return out

    def gradient_step(self, model):
        if self._grads is None:  # the native buffer never moves: one tensor over it for the whole run
            self._grads = self.torch.from_numpy(model.flat("grad"))
        return _Reduction(self, model)

    def check_sync(self, model, step):
        every = [None] * self.world
        self.collective("the weight checksum", self.dist.all_gather_object, every, weight_checksums(model))
        message = sync_mismatch(every, step)
        if message:
            raise RunFailed(message)

    def close(self):
        try:
            self.dist.destroy_process_group()
        except (RuntimeError, ValueError):
            pass


class _Reduction:
    """One step's gradient all-reduce: ``ready`` (overlap) is the grads_ready callback that starts
    each range's reduction while the backward pass goes on; ``finish`` completes them and sums the
    ranks' losses and failures."""

    def __init__(self, group, model):
        self.group, self.torch, self.dist = group, group.torch, group.dist
        self.grads = group._grads
        self.ranges = model.grads_ready_ranges if group.overlap else [(0, self.grads.numel())]
        self.ready = self.launch if group.overlap else None
        self.flights = []  # (launched, work, [completed]) per range, in launch order
        self.exposed_ms = 0.0
        self.launch_error = None  # raised by finish(): the native backward pass must not see it

    def launch(self, offset, count):
        """Start the all-reduce of grads[offset:offset + count] (the native backward pass calls
        this, possibly from its dW thread)."""
        if self.launch_error is not None:
            return
        done = []
        t0 = time.perf_counter()
        try:
            work = self.dist.all_reduce(self.grads[offset:offset + count], async_op=True)
        except RuntimeError as e:
            self.launch_error = e
            return
        work.get_future().add_done_callback(lambda _: done.append(time.perf_counter()))
        self.flights.append((t0, work, done))

    def finish(self, loss, failure):
        """The mean loss over all ranks, once the summed gradients are in place; a failure of
        any rank's step raised on every rank."""
        t0 = time.perf_counter()

        def complete():
            for offset, count in self.ranges[len(self.flights):]:  # all, or those a failure left out
                self.launch(offset, count)
            if self.launch_error is not None:
                raise self.launch_error
            for _, work, _ in self.flights:
                work.wait()
            self.waited = time.perf_counter()  # (a completion callback may still be on its way)
            kind = 0 if failure is None else 1 if isinstance(failure, CompileBudgetExceeded) else 2
            totals = self.torch.tensor([loss if failure is None else 0.0, float(kind == 1), float(kind == 2)],
                                       dtype=self.torch.float64)
            self.dist.all_reduce(totals)
            return totals.tolist()

        total_loss, budget, backend = self.group.collective("the gradient all-reduce", complete)
        self.exposed_ms = (time.perf_counter() - t0) * 1e3
        self.backward_end = t0
        if budget or backend:
            self.raise_failure(failure, CompileBudgetExceeded if budget else BackendError)
        return total_loss / self.group.world

    def raise_failure(self, failure, cls):
        """Every rank raises ``cls`` (a budget failure anywhere wins over a backend failure), with
        the message of the first rank that failed that way."""
        every = [None] * self.group.world
        mine = None if failure is None else (isinstance(failure, CompileBudgetExceeded), str(failure))
        self.group.collective("the exchange of a failed step", self.dist.all_gather_object, every, mine)
        rank, (_, message) = next((r, f) for r, f in enumerate(every)
                                  if f is not None and f[0] == (cls is CompileBudgetExceeded))
        raise cls(f"rank {rank}: {message}")

    def record(self):
        """The step's all-reduce time (with a reduction in flight) and the share of it hidden
        behind the backward pass, for metrics.jsonl."""
        spans = sorted((t0, max(done) if done else self.waited) for t0, _, done in self.flights)
        busy, hidden, reach = 0.0, 0.0, float("-inf")
        for start, end in spans:  # the union of the spans, and its part before the backward pass ended
            start = max(start, reach)
            if end > start:
                busy += end - start
                hidden += max(0.0, min(end, self.backward_end) - start)
                reach = end
        return {"allreduce_ms": busy * 1e3, "allreduce_hidden": hidden / busy if busy > 0 else 0.0}
