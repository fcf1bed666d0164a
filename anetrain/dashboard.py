"""Watching a run: its metrics.jsonl read as it grows, the run's state folded from the records,
and two views of that state: the live terminal view of ``scripts/dashboard.py`` (rich) and the
static report (matplotlib) that ``--png`` and the end of every training run write.

- ``Follower`` reads only what was appended since its last look and holds a torn last line back
  until its newline arrives. A resume rewrites the file without the steps it runs again (a new
  file renamed over the old one, telemetry.truncate_log) and ``--overwrite`` moves it away; the
  follower sees another file (inode) or a shorter one and starts again from the top.
- ``RunState`` is a fold over the records (``add``), so the state of a file read piecewise equals
  the state of the same file read at once; ``summary()`` derives every figure both views show.
- ``SystemStats`` (psutil) watches the training process named in the run's lock file and the
  machine; ``AnePower`` samples ``powermetrics`` on macOS in a background thread.

rich, matplotlib and psutil are imported by the functions that use them: the trainer imports this
module to write its report, and a training process has no use for rich.
"""
import collections
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np

from . import rundir, telemetry
from .errors import UsageError

WINDOW = 20  # the last steps averaged for throughput and the time breakdown
TRAIN_STYLE, VAL_STYLE = "cyan", "magenta"
# the braille dot of each (column, row) of a 2x4 cell, as Unicode numbers them
BRAILLE_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


# ---------------------------------------------------------------------------- reading the file
class Follower:
    """Reads the records appended to a JSON-lines file since the last ``poll``."""

    def __init__(self, path):
        self.path = path
        self.ident = None   # (device, inode) of the file read so far; None before it exists
        self.offset = 0     # bytes of it consumed: whole lines only
        self.bad = 0        # complete lines that were not a JSON object

    def poll(self):
        """(the new records, whether the file was replaced, cut short or removed since the last
        poll, so that every record read before must be forgotten)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            gone = self.ident is not None
            self.ident, self.offset = None, 0
            return [], gone
        with f:
            st = os.fstat(f.fileno())
            ident = (st.st_dev, st.st_ino)
            reset = self.ident is not None and (ident != self.ident or st.st_size < self.offset)
            if reset or self.ident is None:
                self.offset = 0
            self.ident = ident
            f.seek(self.offset)
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]
        self.offset += len(whole)
        records = []
        for line in whole.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                records.append(rec)
            elif line.strip():
                self.bad += 1
        return records, reset


NUMBER = (int, float)
# what the views read from each kind of record (telemetry.step_record and the trainer write them);
# a record without them is counted as unreadable and skipped whole
RECORD_FIELDS = {
    "step": (("step", int), ("loss", NUMBER), ("lr", NUMBER), ("grad_norm", NUMBER), ("ms", dict),
             ("step_ms", NUMBER), ("tokens", int), ("tflops", NUMBER), ("compiles", int)),
    "eval": (("step", int), ("val_loss", NUMBER)),
    "sample": (("step", int), ("text", str)),
    "placement": (("kernels", dict), ("backend", str), ("programs", str)),
    "restart": (("step", int),),
}


class RunState:
    """What the records of one metrics file say about its run."""

    def __init__(self, window=WINDOW):
        self.window = window
        self.steps, self.losses, self.tokens_per_s, self.tflops = [], [], [], []
        self.recent = collections.deque(maxlen=window)   # the last step records, whole
        self.evals = []            # (step, validation loss)
        self.sample = None         # the latest sample record
        self.placement = None      # the latest placement record (one per process start)
        self.restarts = []         # restart records (exec() restarts)
        self.starts = 0            # placement records: the processes that ran this run
        self.compiles_before = 0   # compiles of the processes before the latest
        self.compiles_now = 0      # compiles of the latest process so far
        self.last_time = None      # when the latest record was written
        self.bad = 0               # unreadable lines, and records without the fields of their kind

    def add(self, rec):
        try:
            self._add(rec)
        except (KeyError, TypeError, ValueError):
            self.bad += 1
            return
        if isinstance(rec.get("time"), (int, float)):
            self.last_time = rec["time"]

    def _add(self, rec):
        kind = telemetry.record_kind(rec)
        for field, typ in RECORD_FIELDS.get(kind, ()):
            if not isinstance(rec[field], typ) or isinstance(rec[field], bool):
                raise TypeError(f"{kind} record: {field} is {rec[field]!r}")
        if kind == "step":
            self.steps.append(rec["step"])
            self.losses.append(rec["loss"])
            self.tokens_per_s.append(telemetry.tokens_per_s(rec))
            self.tflops.append(rec["tflops"])
            self.recent.append(rec)
            self.compiles_now = max(self.compiles_now, rec["compiles"])
        elif kind == "eval":
            self.evals.append((rec["step"], rec["val_loss"]))
        elif kind == "sample":
            self.sample = rec
        elif kind == "placement":
            self.placement = rec
            self.starts += 1
            self.compiles_before += self.compiles_now
            self.compiles_now = 0
        elif kind == "restart":
            self.restarts.append(rec)

    def summary(self):
        """Every figure the views show, as a dict (None where the records do not say yet)."""
        recent = list(self.recent)
        s = {"step": self.steps[-1] if self.steps else None, "loss": self.losses[-1] if self.losses else None,
             "lr": None, "grad_norm": None, "loss_mean": None, "tokens_per_s": None, "tflops": None,
             "step_ms": None, "s_per_step": None, "phases": [], "window": len(recent),
             "val_loss": self.evals[-1][1] if self.evals else None,
             "val_step": self.evals[-1][0] if self.evals else None,
             "compiles_now": self.compiles_now, "compiles_total": self.compiles_before + self.compiles_now,
             "restarts": len(self.restarts), "resumes": max(0, self.starts - 1 - len(self.restarts)),
             "last_restart": self.restarts[-1] if self.restarts else None,
             "placement": telemetry.placement_lines(self.placement) if self.placement else [],
             "run": (self.placement or {}).get("run", {}), "bad": self.bad,
             "sample_step": self.sample["step"] if self.sample else None,
             "sample": printable(self.sample["text"]) if self.sample else None}
        if recent:
            last = recent[-1]
            total_ms = sum(r["step_ms"] for r in recent)
            s.update(lr=last["lr"], grad_norm=last["grad_norm"],
                     loss_mean=sum(r["loss"] for r in recent) / len(recent),
                     tokens_per_s=1e3 * sum(r["tokens"] for r in recent) / total_ms if total_ms > 0 else 0.0,
                     tflops=sum(r["tflops"] * r["step_ms"] for r in recent) / total_ms if total_ms > 0 else 0.0,
                     step_ms=total_ms / len(recent))
            keys = [k for k in telemetry.PHASES if any(k in r["ms"] for r in recent)]
            keys += sorted({k for r in recent for k in r["ms"]} - set(keys))
            for k in keys:
                ms = sum(r["ms"].get(k, 0.0) for r in recent) / len(recent)
                s["phases"].append((telemetry.PHASES.get(k, k), ms, ms / s["step_ms"] if s["step_ms"] else 0.0))
            times = [r["time"] for r in recent if isinstance(r.get("time"), (int, float))]
            if len(times) > 1 and times[-1] > times[0]:
                s["s_per_step"] = (times[-1] - times[0]) / (len(times) - 1)  # wall time, evals included
        return s


class Watch:
    """A metrics file followed into a RunState, which starts afresh when the file is replaced."""

    def __init__(self, path, window=WINDOW):
        self.path, self.window = path, window
        self.follower = Follower(path)
        self.state = RunState(window)

    def update(self):
        """Read what was appended; True when anything changed."""
        bad = self.follower.bad
        records, reset = self.follower.poll()
        if reset:
            self.state = RunState(self.window)
        self.state.bad += self.follower.bad - bad
        for rec in records:
            self.state.add(rec)
        return reset or bool(records)

    @property
    def status(self):
        """None once records arrived, else why there is nothing to show yet."""
        if self.state.starts or self.state.steps or self.state.evals:
            return None
        if self.follower.ident is None:
            return f"waiting for {self.path} (the run has not started logging)"
        return f"waiting for the first record in {self.path}"


def load(path, window=WINDOW):
    """The RunState of a whole metrics file."""
    w = Watch(path, window)
    w.update()
    return w.state


def printable(text):
    """``text`` with control characters (a sample of an undertrained model has them) made visible."""
    return "".join(c if c.isprintable() else "\ufffd" if c not in "\n\t" else " " for c in text)


# ---------------------------------------------------------------------------- the machine
class SystemStats:
    """CPU and memory of the training process (the pid in the run's lock file) and of the machine.
    A process's CPU share is over the time since the previous look (since it started, at the
    first look), so a single look (the report) is meaningful too."""

    def __init__(self, run_dir):
        self.lock_path = os.path.join(run_dir, rundir.LOCK_NAME)
        self.pid = None      # the pid the lock file named at the last look
        self.proc = None     # its psutil.Process while it runs and holds the lock
        self.last = None     # (CPU seconds, wall clock) of self.proc at the previous look
        self.looked_at_machine = False

    def training_pid(self):
        try:
            with open(self.lock_path) as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def training_process(self):
        """The run's live process, or None."""
        import psutil

        pid = self.training_pid()
        if pid != self.pid:
            self.pid, self.proc, self.last = pid, None, None
            if pid is not None:
                try:
                    p = psutil.Process(pid)
                    self.proc = p if self.holds_lock(p) else None
                except psutil.Error:
                    pass
        try:
            if self.proc is not None and (not self.proc.is_running() or self.proc.status() == psutil.STATUS_ZOMBIE):
                self.proc = None
        except psutil.Error:
            self.proc = None
        return self.proc

    def holds_lock(self, p):
        """Whether ``p`` has the lock file open: the pid is the run's, not a later process's that
        got the number of a finished run."""
        import psutil

        lock = os.path.realpath(self.lock_path)
        try:
            return any(f.path == lock for f in p.open_files())
        except psutil.AccessDenied:
            return True  # cannot tell: believe the lock file
        except psutil.Error:
            return False

    def lines(self):
        import psutil

        p, out = self.training_process(), []
        if p is None:
            out.append("training process: not running" + (f" (pid {self.pid} has ended)" if self.pid else ""))
        else:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu, now = t.user + t.system, time.time()
                    since = self.last or (0.0, p.create_time())
                    share = (cpu - since[0]) / (now - since[1]) if now > since[1] else 0.0
                    self.last = (cpu, now)
                    rss, threads = p.memory_info().rss, p.num_threads()
                out.append(f"training process (pid {p.pid}): CPU {100 * share:.0f}%, "
                           f"{rss / 2**20:,.0f} MiB resident, {threads} threads")
            except psutil.Error:
                out.append(f"training process: pid {p.pid} ended just now")
        # psutil's machine CPU share is since its previous call: the first look measures 0.1 s
        cpu = psutil.cpu_percent(interval=None if self.looked_at_machine else 0.1)
        self.looked_at_machine = True
        vm = psutil.virtual_memory()
        out.append(f"machine: CPU {cpu:.0f}% of {psutil.cpu_count()} cores, "
                   f"memory {vm.used / 2**30:.1f} of {vm.total / 2**30:.1f} GiB used")
        return out


class AnePower:
    """The ANE's power draw from ``powermetrics --samplers ane_power`` (macOS; root), sampled in a
    background thread. ``sudo -n`` never asks for a password: without root the status says so."""

    PATTERN = re.compile(r"ANE Power:\s*([0-9.]+)\s*mW")

    def __init__(self, interval_s=2.0, platform=None, run=subprocess.run, is_root=None):
        self.interval_s = interval_s
        self.platform = platform or sys.platform
        self.run = run
        self.is_root = (os.geteuid() == 0) if is_root is None and hasattr(os, "geteuid") else bool(is_root)
        self.stopped = threading.Event()
        self.thread = None
        self.status = ("ANE power: n/a off macOS" if self.platform != "darwin"
                       else "ANE power: sampling powermetrics")

    def sample(self):
        """Take one sample; returns whether sampling can go on."""
        cmd = ["powermetrics", "--samplers", "ane_power", "-i", "1000", "-n", "1"]
        try:
            r = self.run(cmd if self.is_root else ["sudo", "-n"] + cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            self.status = f"ANE power: powermetrics failed ({type(e).__name__})"
            return False
        if r.returncode != 0:
            self.status = "ANE power: needs root (sudo powermetrics)"
            return False
        m = self.PATTERN.search(r.stdout)
        if m is None:
            self.status = "ANE power: not reported by powermetrics on this Mac"
            return False
        self.status = f"ANE power: {float(m.group(1)):.0f} mW"
        return True

    def start(self):
        if self.platform == "darwin" and self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="ane-power", daemon=True)
            self.thread.start()
        return self

    def _loop(self):
        while not self.stopped.is_set() and self.sample():
            self.stopped.wait(self.interval_s)

    def stop(self):
        self.stopped.set()


# ---------------------------------------------------------------------------- plotting in text
def braille_plot(series, width, height, x_range, y_range):
    """Draw line series on a ``width`` x ``height`` grid of braille cells (2 x 4 dots each).
    ``series`` is a list of (xs, ys), xs ascending; consecutive points are joined. Returns one mask
    per series: rows of ``width`` ints, each the dot bits of a cell (0x2800 + bits is its char).
    The points are first gathered per dot column (NumPy), so a long run costs no more to draw per
    frame than the terminal has columns."""
    (x0, x1), (y0, y1) = x_range, y_range
    cols, rows = 2 * width, 4 * height
    masks = []
    for xs, ys in series:
        mask = [[0] * width for _ in range(height)]
        masks.append(mask)
        if not len(xs):
            continue
        c = np.clip(np.rint((np.asarray(xs, float) - x0) / (x1 - x0) * (cols - 1)), 0, cols - 1).astype(int)
        r = np.clip((y1 - np.asarray(ys, float)) / (y1 - y0) * (rows - 1), 0, rows - 1)
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])   # each run of points in one column
        ends = np.r_[starts[1:], len(c)] - 1
        spans = {}   # dot column -> [top row, bottom row]

        def cover(col, a, b):
            top, bottom = sorted((round(a), round(b)))
            span = spans.setdefault(col, [top, bottom])
            span[0], span[1] = min(span[0], top), max(span[1], bottom)

        for i, (col, lo, hi) in enumerate(zip(c[starts], np.minimum.reduceat(r, starts),
                                              np.maximum.reduceat(r, starts))):
            cover(int(col), lo, hi)
            if i:  # the segment from the previous column's last point: each column gets the rows it crosses
                pc, pr, r0 = int(c[starts[i - 1]]), r[ends[i - 1]], r[starts[i]]

                def at(t):
                    return pr + (r0 - pr) * (t - pc) / (col - pc)

                for cc in range(pc, int(col) + 1):
                    cover(cc, at(max(pc, cc - 0.5)), at(min(col, cc + 0.5)))
        for col, (top, bottom) in spans.items():
            for row in range(top, bottom + 1):
                mask[row // 4][col // 2] |= BRAILLE_BITS[col % 2][row % 4]
    return masks


def fmt_value(v):
    return f"{v:.4g}"


def finite_points(xs, ys):
    """(xs, ys) as float arrays without the points whose y is not finite."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    keep = np.isfinite(ys)
    return xs[keep], ys[keep]


class LossChart:
    """Train loss (a line) and validation losses (joined points) as braille, sized to the space
    rich gives it: every render fits the terminal as it is now."""

    def __init__(self, state):
        self.state = state

    def __rich_console__(self, console, options):
        from rich.text import Text

        width, height = options.max_width, options.height or 12
        st = self.state
        train = finite_points(st.steps, st.losses)
        val = finite_points([s for s, _ in st.evals], [v for _, v in st.evals])
        xs, ys = np.r_[train[0], val[0]], np.r_[train[1], val[1]]
        if len(xs) < 2 or width < 16 or height < 2:
            yield Text("the loss curve appears after the first steps", style="dim")
            return
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()), float(ys.min()), float(ys.max())
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        labels = {0: fmt_value(y1), (height - 2) // 2: fmt_value((y0 + y1) / 2), height - 2: fmt_value(y0)}
        margin = max(len(v) for v in labels.values()) + 1
        pw, ph = width - margin, height - 1
        train, val = braille_plot([train, val], pw, ph, (x0, x1), (y0, y1))
        out = Text(no_wrap=True, overflow="crop")
        for r in range(ph):
            out.append(labels.get(r, "").rjust(margin - 1) + " ", style="dim")
            cells = [(chr(0x2800 + (t | v)) if t | v else " ", VAL_STYLE if v else TRAIN_STYLE)
                     for t, v in zip(train[r], val[r])]
            for style, run in itertools.groupby(cells, key=lambda cell: cell[1]):
                out.append("".join(ch for ch, _ in run), style=style)
            out.append("\n")
        left, right = f"step {x0}", f"{x1}"
        out.append(" " * margin + left + right.rjust(pw - len(left)), style="dim")
        yield out


# ---------------------------------------------------------------------------- the live view
def fmt_count(v):
    return "-" if v is None else f"{v:,.0f}"


def fmt_tflops(v):
    return "-" if v is None else f"{v:.2f}" if v >= 1 else f"{v:.4f}"


def fmt_duration(s):
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def header_text(s, run_dir, running=None, age_s=None):
    """The title line: whether the run's process lives (``running`` None: not looked at), how far,
    what, and (last, as the first to be cut short in a narrow terminal) where."""
    run = s["run"]
    parts = []
    if running is not None:
        parts.append("training" if running else "not running")
    if s["step"] is not None:
        total = run.get("steps")
        parts.append(f"step {s['step']:,}" + (f" of {total:,}" if total else ""))
        if total and s["s_per_step"] and running and s["step"] < total:
            parts.append(f"{fmt_duration((total - s['step']) * s['s_per_step'])} to go")
    if age_s is not None:
        parts.append(f"last record {fmt_duration(age_s)} ago")
    if run:
        parts.append(f"{run['model']} ({run['params'] / 1e6:.2f}M params), {run['pipeline']} pipeline on "
                     f"{run['backend']}")
    return " · ".join(parts + [run_dir])


def stats_rows(s):
    """(label, value) rows of the numbers panel."""
    def f4(v):
        return "-" if v is None else f"{v:.4f}"

    val = "-" if s["val_loss"] is None else f"{s['val_loss']:.4f} (step {s['val_step']:,})"
    return [("step", fmt_count(s["step"])),
            ("loss", "-" if s["loss_mean"] is None else f"{s['loss']:.4f} (mean {s['loss_mean']:.4f})"),
            ("val loss", val),
            ("lr", "-" if s["lr"] is None else f"{s['lr']:.2e}"),
            ("grad norm", f4(s["grad_norm"])),
            ("tokens/s", fmt_count(s["tokens_per_s"])),
            ("TFLOP/s", fmt_tflops(s["tflops"])),
            ("step time", "-" if s["step_ms"] is None else f"{s['step_ms']:.1f} ms")]


def run_lines(s, system_lines, power_line):
    """The run panel: compiles and restarts, where kernels run, the machine."""
    restart = ""
    if s["last_restart"]:
        r = s["last_restart"]
        restart = f" (last after step {r['step']:,}: {r.get('reason', '?')})"
    lines = [f"compiles {s['compiles_now']:,} in this process, {s['compiles_total']:,} in all · "
             f"restarts {s['restarts']}{restart} · resumes {s['resumes']}"]
    lines += s["placement"] or ["kernels: not placed yet"]
    lines += [line for line in (*system_lines, power_line) if line]
    if s["bad"]:
        lines.append(f"{s['bad']} unreadable records skipped")
    return lines


def live_view(console, state, run_dir, system_lines=(), power_line="", running=None, status=None):
    """The whole dashboard for a terminal of ``console``'s size, as a rich Layout: ``status`` (the
    Watch's) stands in for the chart until there are records."""
    from rich.layout import Layout
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    width = console.size.width
    s = state.summary()
    age = time.time() - state.last_time if state.last_time else None
    header = Text(header_text(s, run_dir, running, age), style="bold", no_wrap=True, overflow="ellipsis")

    stats = Table.grid(padding=(0, 2))
    stats.add_column(style="dim")
    stats.add_column(justify="right")
    for label, value in stats_rows(s):
        stats.add_row(label, value)

    times = Table.grid(padding=(0, 1))
    times.add_column(style="dim")
    times.add_column(justify="right")
    times.add_column(justify="right")
    times.add_column(style="green")
    for label, ms, share in s["phases"]:
        times.add_row(label, f"{ms:.1f} ms", f"{100 * share:.1f}%", "█" * round(12 * share))
    if not s["phases"]:
        times.add_row("no steps yet", "", "", "")

    inner = width - 4
    info = Text("\n".join(run_lines(s, system_lines, power_line)))
    info_h = len(info.wrap(console, inner)) + 2
    if s["sample"] is None:
        sample = Text("no sample yet (train.py --sample-interval)", style="dim")
        sample_title = "latest sample"
    else:
        sample = Text(s["sample"])
        sample_title = f"latest sample (step {s['sample_step']:,})"
    sample_h = min(8, len(sample.wrap(console, inner))) + 2

    legend = Text.assemble("loss: ", ("train", TRAIN_STYLE), " · ", ("validation", VAL_STYLE))
    chart = Panel(LossChart(state) if status is None else Text(status, style="yellow"), title=legend)
    numbers = Panel(stats, title=f"numbers (means of the last {s['window']} steps)" if s["window"] else "numbers")
    breakdown = Panel(times, title="step time by phase")

    numbers_h, breakdown_h = len(stats_rows(s)) + 2, max(1, len(s["phases"])) + 2
    root = Layout()
    root.split_column(Layout(header, size=1), Layout(name="main"), Layout(Panel(info, title="run"), size=info_h),
                      Layout(Panel(sample, title=sample_title), size=sample_h))
    if width >= 150:
        root["main"].split_row(Layout(chart), Layout(numbers, size=44), Layout(breakdown, size=46))
    elif width >= 100:
        side = Layout(size=46)
        side.split_column(Layout(numbers, size=numbers_h), Layout(breakdown, size=breakdown_h), Layout(Text(" ")))
        root["main"].split_row(Layout(chart), side)
    else:
        bottom = Layout(size=max(numbers_h, breakdown_h))
        bottom.split_row(Layout(numbers), Layout(breakdown))
        root["main"].split_column(Layout(chart), bottom)
    return root


def render_text(state, run_dir, width=120, height=40, **kw):
    """The live view as plain text, rendered without a terminal (tests, logs)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, height=height, record=True, color_system=None,
                      force_terminal=False)
    console.print(live_view(console, state, run_dir, **kw))
    return console.export_text()


def watch(run_dir, interval_s=1.0, window=WINDOW, console=None):
    """Follow ``run_dir`` in the terminal until Ctrl-C (or SIGTERM); returns 0."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    w = Watch(os.path.join(run_dir, rundir.METRICS_NAME), window)
    system = SystemStats(run_dir)
    power = AnePower().start()
    snapshot = {"lines": [], "running": None}

    def frame():
        return live_view(console, w.state, run_dir, snapshot["lines"], power.status, snapshot["running"], w.status)

    def on_term(signum, frame_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        # drawn by this thread only (no auto refresh), so the state is never read while it changes;
        # drawn again when records arrive, the terminal's size changes, or each interval (the ages)
        with Live(console=console, screen=True, auto_refresh=False, get_renderable=frame,
                  redirect_stdout=False, redirect_stderr=False) as live:
            drawn_size, next_poll = None, 0.0
            while True:
                redraw = console.size != drawn_size
                if time.monotonic() >= next_poll:
                    w.update()
                    snapshot["running"] = system.training_process() is not None
                    snapshot["lines"] = system.lines()
                    next_poll = time.monotonic() + interval_s
                    redraw = True
                if redraw:
                    drawn_size = console.size
                    live.refresh()
                time.sleep(min(0.25, interval_s))
    except KeyboardInterrupt:
        pass
    finally:
        power.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0


# ---------------------------------------------------------------------------- the static report
REPORT_SIZE = (12, 8)  # inches at REPORT_DPI
REPORT_DPI = 100


def report_figure(state, run_dir, system_lines=(), power_line=""):
    """The report as a matplotlib Figure (no pyplot, so no GUI backend): loss curves, throughput
    per step, the step-time breakdown and the run's text (numbers, placement, machine, sample)."""
    from matplotlib.figure import Figure

    s = state.summary()
    fig = Figure(figsize=REPORT_SIZE, dpi=REPORT_DPI)  # fixed margins: a layout engine draws twice
    fig.suptitle("anetrain · " + header_text(s, run_dir), fontsize=10)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 2), left=0.07, right=0.93, bottom=0.05, top=0.92,
                            wspace=0.3, hspace=0.3)
    ax_loss, ax_tput = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_time, ax_text = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])

    ax_loss.plot(state.steps, state.losses, color="tab:cyan", linewidth=1, label="train")
    ax_loss.plot([e[0] for e in state.evals], [e[1] for e in state.evals], color="tab:purple", marker="o",
                 markersize=3, linewidth=1, label="validation")
    ax_loss.set(title="loss", xlabel="step")
    ax_loss.legend(loc="upper right", fontsize=8)

    ax_tput.plot(state.steps, state.tokens_per_s, color="tab:blue", linewidth=1)
    ax_tput.set(title="throughput per step", xlabel="step", ylabel="tokens/s")
    # TFLOP/s is tokens/s times the model's FLOPs per token: the same line on a second scale
    ratio = next((f / t for f, t in zip(state.tflops, state.tokens_per_s) if t > 0), 0.0)
    if ratio > 0:
        ax_tput.secondary_yaxis("right", functions=(lambda x: x * ratio, lambda y: y / ratio)).set_ylabel("TFLOP/s")

    phases = s["phases"]
    ax_time.barh([p[0] for p in phases], [p[1] for p in phases], color="tab:green")
    ax_time.invert_yaxis()
    for i, (_, ms, share) in enumerate(phases):
        ax_time.annotate(f"{100 * share:.1f}%", (ms, i), xytext=(3, 0), textcoords="offset points",
                         va="center", fontsize=8)
    ax_time.set(title=f"step time by phase (mean of the last {s['window']} steps)", xlabel="ms")

    ax_text.axis("off")
    lines = [f"{label}: {value}" for label, value in stats_rows(s)]
    lines += [""] + run_lines(s, system_lines, power_line)
    if s["sample"] is not None:
        lines += ["", f"latest sample (step {s['sample_step']:,}):"]
        lines += textwrap.wrap(s["sample"], 80, max_lines=6, placeholder=" …")
    wrapped = [w for line in lines for w in (textwrap.wrap(line, 80, subsequent_indent="    ") or [""])]
    ax_text.text(0, 1, "\n".join(wrapped), va="top", ha="left", family="monospace", fontsize=7,
                 transform=ax_text.transAxes, parse_math=False)
    return fig


def write_png(state, path, run_dir, system_lines=(), power_line=""):
    """Write the report of ``state`` to ``path`` (PNG, replaced atomically); returns the Figure."""
    fig = report_figure(state, run_dir, system_lines, power_line)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a sample's character missing from the font is no matter
        rundir.write_atomically(path, lambda f: fig.savefig(f, format="png"))
    return fig


def write_report(run_dir, path=None, window=WINDOW):
    """The report of the run in ``run_dir`` from its metrics file, to ``path`` (default
    ``<run_dir>/report.png``); the process of the run is the one taking the machine's measure."""
    path = path or os.path.join(run_dir, rundir.REPORT_NAME)
    state = load(os.path.join(run_dir, rundir.METRICS_NAME), window)
    return write_png(state, path, run_dir, SystemStats(run_dir).lines(), AnePower().status)


# ---------------------------------------------------------------------------- the command line
def main(run_dir, png=None, interval_s=1.0, window=WINDOW):
    """scripts/dashboard.py: UsageError for a bad command line, else the live view or the PNG."""
    if not os.path.exists(run_dir):
        raise UsageError(f"run directory {run_dir} does not exist; give the --out of a training run "
                         f"(scripts/train.py --out DIR)")
    if not os.path.isdir(run_dir):
        raise UsageError(f"{run_dir} is not a directory; give the --out of a training run, which holds "
                         f"{rundir.METRICS_NAME}")
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise UsageError(f"--interval must be a number of seconds > 0, got {interval_s}")
    if window < 1:
        raise UsageError(f"--window must be at least 1 step, got {window}")
    if png is None:
        return watch(run_dir, interval_s, window)
    metrics = os.path.join(run_dir, rundir.METRICS_NAME)
    state = load(metrics, window)
    if not (state.steps or state.evals or state.starts):
        raise UsageError(f"{metrics} holds no records yet; wait for the run's first step, or watch it live "
                         f"without --png")
    d = os.path.dirname(os.path.abspath(png))
    if not os.path.isdir(d):
        raise UsageError(f"cannot write --png {png}: {d} is not a directory")
    try:
        power = AnePower()
        if power.platform == "darwin":
            power.sample()
        write_png(state, png, run_dir, SystemStats(run_dir).lines(), power.status)
    except OSError as e:
        raise UsageError(f"cannot write --png {png}: {e.strerror or e}; choose a writable path")
    print(f"wrote {png}", file=sys.stderr)
    return 0
