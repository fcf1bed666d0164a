"""The dashboard (scripts/dashboard.py, anetrain/dashboard.py): the follower of metrics.jsonl, the
live view rendered headless and the PNG report, checked against figures computed here from the
recorded file of a real training run (with an exec() restart and a --resume in it); report.png at
the end of every run; the command line's errors; --wandb with and without wandb installed."""
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

from anetrain import dashboard, rundir, telemetry
from test_train_cli import ROOT, SMALL, TRAIN, records, train

SMALL = [a for a in SMALL if a != "--no-report"]  # these runs draw their report

DASHBOARD = os.path.join(ROOT, "scripts", "dashboard.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the file signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A recorded run: 4 static-pipeline steps under a compile budget that forces an exec() restart
    after step 2, then a --resume on the dynamic pipeline to step 8 with validation and a sample."""
    out = str(tmp_path_factory.mktemp("dash") / "run")
    first = train(*SMALL, "--steps", "4", "--pipeline", "static", "--compile-budget", "16", "--out", out)
    second = train(*SMALL, "--steps", "8", "--eval-interval", "2", "--sample-interval", "4", "--sample-tokens", "12",
                   "--resume", "--out", out)
    return {"out": out, "stderr": first.stderr + second.stderr, "metrics": os.path.join(out, rundir.METRICS_NAME)}


def step_records(out):
    return records(out, "step")


# ---------------------------------------------------------------- report.png and the PNG view
def test_every_training_run_leaves_report_png(run):
    path = os.path.join(run["out"], rundir.REPORT_NAME)
    assert f"report: {path}" in run["stderr"]
    w, h = png_size(path)
    assert (w, h) == (dashboard.REPORT_SIZE[0] * dashboard.REPORT_DPI, dashboard.REPORT_SIZE[1] * dashboard.REPORT_DPI)
    assert os.path.getsize(path) > 10_000  # drawn, not an empty canvas


def test_a_report_that_cannot_be_drawn_is_a_warning(tmp_path, monkeypatch, capsys):
    from anetrain import checkpoint, trainer

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts here")

    monkeypatch.setattr(dashboard, "write_png", broken)
    monkeypatch.delenv(trainer.RETRY_ENV, raising=False)
    out = str(tmp_path / "run")
    assert trainer.main([*SMALL, "--steps", "2", "--out", out]) == 0
    err = capsys.readouterr().err
    report = os.path.join(out, rundir.REPORT_NAME)
    assert err.count("warning:") == 1 and f"warning: no {report}: RuntimeError: no fonts here" in err
    assert "Traceback" not in err and not os.path.exists(report)
    assert checkpoint.latest(out).endswith("ckpt_00000002.safetensors")


def test_no_report_skips_the_drawing(tmp_path, monkeypatch):
    from anetrain import trainer

    def drawn(*args, **kwargs):
        raise AssertionError("--no-report drew a report")

    monkeypatch.setattr(dashboard, "write_report", drawn)
    monkeypatch.delenv(trainer.RETRY_ENV, raising=False)
    out = str(tmp_path / "run")
    assert trainer.main([*SMALL, "--no-report", "--steps", "1", "--out", out]) == 0
    assert not os.path.exists(os.path.join(out, rundir.REPORT_NAME))


def test_png_figure_draws_the_file(run):
    window = 4
    steps = step_records(run["out"])
    evals = records(run["out"], "eval")
    fig = dashboard.report_figure(dashboard.load(run["metrics"], window), run["out"])
    loss_ax, tput_ax, time_ax, text_ax = fig.axes
    train_line, val_line = loss_ax.lines
    assert list(train_line.get_xdata()) == [r["step"] for r in steps]
    assert list(train_line.get_ydata()) == [r["loss"] for r in steps]
    assert list(val_line.get_xdata()) == [e["step"] for e in evals] and len(evals) == 2  # steps 6 and 8
    assert list(val_line.get_ydata()) == [e["val_loss"] for e in evals]
    (tput,) = tput_ax.lines
    assert list(tput.get_ydata()) == pytest.approx([r["tokens"] / (r["step_ms"] / 1e3) for r in steps])
    # one bar per phase, as long as its mean over the last `window` steps
    last = steps[-window:]
    bars = {t.get_text(): p.get_width() for t, p in zip(time_ax.get_yticklabels(), time_ax.patches)}
    assert bars == pytest.approx({telemetry.PHASES[k]: sum(r["ms"][k] for r in last) / window
                                  for k in steps[-1]["ms"]})
    text = text_ax.texts[0].get_text()
    assert f"loss: {steps[-1]['loss']:.4f}" in text and "restarts 1" in text


def test_png_from_the_command_line(run, tmp_path):
    path = tmp_path / "view.png"
    p = subprocess.run([sys.executable, DASHBOARD, run["out"], "--png", str(path)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert png_size(path) == (1200, 800)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(rundir.TMP_PREFIX)]


# ---------------------------------------------------------------- the live view, headless
def test_live_view_shows_the_file_s_figures(run):
    window = 4
    out, recs = run["out"], records(run["out"])
    steps = step_records(out)
    last = steps[-window:]
    state = dashboard.load(run["metrics"], window)
    text = dashboard.render_text(state, out, width=180, height=50, system_lines=["machine: test line"],
                                 power_line="ANE power: n/a off macOS")

    assert f"step {steps[-1]['step']} of 8" in text
    mean_loss = sum(r["loss"] for r in last) / window
    assert f"{steps[-1]['loss']:.4f} (mean {mean_loss:.4f})" in text
    val = records(out, "eval")[-1]
    assert f"{val['val_loss']:.4f} (step {val['step']})" in text
    tokens_per_s = sum(r["tokens"] for r in last) / sum(r["step_ms"] for r in last) * 1e3
    assert re.search(rf"tokens/s\s+{tokens_per_s:,.0f}\b", text)
    tflops = sum(r["tflops"] * r["step_ms"] for r in last) / sum(r["step_ms"] for r in last)
    assert re.search(rf"TFLOP/s\s+{tflops:.4f}\b", text)
    step_ms = sum(r["step_ms"] for r in last) / window
    for key, label in telemetry.PHASES.items():
        share = sum(r["ms"][key] for r in last) / window / step_ms
        assert re.search(rf"{re.escape(label)}\s+[0-9.]+ ms\s+{100 * share:.1f}%", text), label

    # compiles per process: the largest count of each process's steps (a placement record starts one)
    per_process = []
    for r in recs:
        if r.get("type") == "placement":
            per_process.append(0)
        elif "loss" in r:
            per_process[-1] = max(per_process[-1], r["compiles"])
    assert f"compiles {per_process[-1]} in this process, {sum(per_process)} in all" in text
    assert run["stderr"].count("[restart after step") == 1
    assert "restarts 1 (last after step 2:" in text and "resumes 1" in text
    placement = records(out, "placement")[-1]
    assert f"kernels ({placement['programs']} programs): " in text
    for name, k in placement["kernels"].items():
        assert name in text and k["backend"] in text
    sample = records(out, "sample")[-1]
    assert f"latest sample (step {sample['step']})" in text
    assert all(word in text for word in sample["text"].split() if word.isprintable())
    assert "machine: test line" in text and "ANE power: n/a off macOS" in text


def test_live_view_fits_the_terminal_and_the_chart_grows_with_it(run):
    state = dashboard.load(run["metrics"])

    def chart_size(width, height):
        lines = dashboard.render_text(state, run["out"], width=width, height=height).splitlines()
        assert len(lines) == height and max(len(line.rstrip()) for line in lines) <= width
        top = next(i for i, line in enumerate(lines) if "loss: train" in line)
        left = lines[top].index("╭")
        bottom = next(i for i in range(top + 1, height) if lines[i][left] == "╰")
        return lines[top].index("╮", left) - left, bottom - top

    # pairs of widths in each arrangement (chart above the numbers, beside them, beside both panels)
    for narrow, wide in ((60, 90), (105, 140), (155, 220)):
        assert chart_size(narrow, 40)[0] < chart_size(wide, 40)[0]
    assert chart_size(120, 30)[1] < chart_size(120, 60)[1]


def test_live_view_of_a_run_without_records_says_it_waits(tmp_path):
    w = dashboard.Watch(str(tmp_path / rundir.METRICS_NAME))
    w.update()
    text = dashboard.render_text(w.state, str(tmp_path), status=w.status)
    assert "waiting for" in text and "has not started logging" in text
    (tmp_path / rundir.METRICS_NAME).write_text("")
    w.update()
    assert "waiting for the first record" in dashboard.render_text(w.state, str(tmp_path), status=w.status)


def test_braille_plot_draws_a_connected_line():
    # a straight fall from the top-left to the bottom-right corner of 10 x 3 cells (20 x 12 dots)
    (mask,) = dashboard.braille_plot([([0, 9], [1.0, 0.0])], 10, 3, (0, 9), (0, 1))
    dots = {(2 * c + dc, 4 * r + dr) for r, row in enumerate(mask) for c, bits in enumerate(row)
            for dc in range(2) for dr in range(4) if bits & dashboard.BRAILLE_BITS[dc][dr]}
    assert (0, 0) in dots and (19, 11) in dots
    for x in range(20):  # every column on the line, within a dot of y = 11 * x / 19
        ys = sorted(y for dx, y in dots if dx == x)
        assert ys and min(abs(y - 11 * x / 19) for y in ys) <= 1, (x, ys)
    # a level line at mid height: one row of dots, every column
    (mask,) = dashboard.braille_plot([([0, 5, 9], [0.5, 0.5, 0.5])], 10, 3, (0, 9), (0, 1))
    assert [row.count(0) for row in mask] in ([10, 0, 10], [0, 10, 10], [10, 10, 0])


# ---------------------------------------------------------------- following the file
def lines_of(recs):
    return "".join(json.dumps(r) + "\n" for r in recs)


def fake_steps(first, last):
    return [telemetry.step_record(s, 5.0 - s / 10, 1e-3, 1.0, {"kernels": 6.0, "io": 4.0}, 100, 1e6,
                                  compiles=4) for s in range(first, last + 1)]


def test_follower_holds_back_a_torn_line_until_it_is_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    recs = fake_steps(1, 3)
    whole = lines_of(recs)
    cut = whole.index("\n", whole.index("\n") + 1) + 20  # two records and 20 bytes of the third
    path.write_text(whole[:cut])
    f = dashboard.Follower(str(path))
    assert f.poll() == (recs[:2], False)
    assert f.poll() == ([], False)
    with open(path, "a") as fh:
        fh.write(whole[cut:])
    assert f.poll() == (recs[2:], False)
    with open(path, "a") as fh:
        fh.write("not json\n")
    assert f.poll() == ([], False) and f.bad == 1


def test_follower_starts_over_when_a_resume_rewrites_the_file(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as fh:
        fh.write(lines_of(fake_steps(1, 6)))
    w = dashboard.Watch(path, window=3)
    w.update()
    assert w.state.steps == [1, 2, 3, 4, 5, 6]
    telemetry.truncate_log(path, 4)                 # what --resume from step 4 does (a new file)
    with open(path, "a") as fh:
        fh.write(lines_of(fake_steps(5, 9)))        # and the steps it runs again, and more
    assert w.update()
    assert w.state.steps == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert w.state.summary() == dashboard.load(path, window=3).summary()
    with open(path, "r+") as fh:                    # cut short in place
        fh.truncate(len(lines_of(fake_steps(1, 2))))
    w.update()
    assert w.state.steps == [1, 2]
    os.unlink(path)                                 # --overwrite moved it away
    w.update()
    assert w.state.steps == [] and "waiting for" in w.status


def test_records_without_their_fields_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = fake_steps(1, 2)
    path.write_text(lines_of([good[0], {"step": 2, "loss": "x"}, {"type": "eval", "step": 2}]) + "{oops\n"
                    + lines_of([good[1]]))
    state = dashboard.load(str(path))
    assert state.steps == [1, 2] and state.bad == 3
    assert "3 unreadable records skipped" in dashboard.render_text(state, str(tmp_path))


# ---------------------------------------------------------------- the machine
def test_system_stats_find_the_process_holding_the_lock(tmp_path):
    pytest.importorskip("psutil")
    lock = tmp_path / rundir.LOCK_NAME
    stats = dashboard.SystemStats(str(tmp_path))
    assert stats.lines()[0] == "training process: not running"
    with open(lock, "w") as held:  # this process holds the run's lock file open, as a trainer does
        held.write(str(os.getpid()))
        held.flush()
        assert stats.training_process().pid == os.getpid()
        line = stats.lines()[0]
        assert line.startswith(f"training process (pid {os.getpid()}): CPU ") and "MiB resident" in line
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())
    assert stats.training_process() is None
    assert stats.lines()[0] == f"training process: not running (pid {dead.stdout.strip()} has ended)"
    assert stats.lines()[1].startswith("machine: CPU ")


def test_ane_power_sampling():
    calls = []

    def runner(output, code):
        def run(cmd, **kw):
            calls.append(cmd)
            return subprocess.CompletedProcess(cmd, code, stdout=output, stderr="")
        return run

    off = dashboard.AnePower(platform="linux", run=runner("", 0)).start()
    assert off.status == "ANE power: n/a off macOS" and off.thread is None and not calls
    mac = dashboard.AnePower(platform="darwin", run=runner("", 1), is_root=False)
    assert not mac.sample() and mac.status == "ANE power: needs root (sudo powermetrics)"
    assert calls[-1][:3] == ["sudo", "-n", "powermetrics"] and "ane_power" in calls[-1]
    root = dashboard.AnePower(platform="darwin", run=runner("**** Processor usage ****\nANE Power: 123 mW\n", 0),
                              is_root=True)
    assert root.sample() and root.status == "ANE power: 123 mW" and calls[-1][0] == "powermetrics"


# ---------------------------------------------------------------- the command line
def test_the_live_view_follows_a_run_from_before_its_start_and_quits_on_ctrl_c(tmp_path):
    """In a terminal (a pty): the view waits in an empty run directory, follows a run through its
    exec() restarts to its last step, and Ctrl-C exits 0 with the cursor shown and the normal
    screen back. A Watch polled here meanwhile ends with the state of the whole file."""
    import fcntl
    import termios

    out = tmp_path / "run"
    out.mkdir()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the dashboard in the pty
        os.execv(sys.executable, [sys.executable, DASHBOARD, str(out), "--interval", "0.2"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    seen = b""

    def read(timeout):
        nonlocal seen
        if select.select([fd], [], [], timeout)[0]:
            seen += os.read(fd, 1 << 16)

    def read_until(marker, timeout=120):
        deadline = time.time() + timeout
        while marker not in seen and time.time() < deadline:
            read(0.2)
        return marker in seen

    w = dashboard.Watch(str(out / rundir.METRICS_NAME))
    try:
        assert read_until(b"waiting for"), seen[-2000:]
        proc = subprocess.Popen([sys.executable, TRAIN, *SMALL, "--steps", "6", "--pipeline", "static",
                                 "--compile-budget", "16", "--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE,
                                text=True)
        polls = 0
        while proc.poll() is None:
            polls += w.update()
            read(0.05)
        err = proc.stderr.read()
        assert proc.returncode == 0, err
        assert read_until(b"step 6 of 6"), seen[-3000:]
        assert read_until(b"restarts 2")
    finally:
        os.kill(pid, signal.SIGINT)
        # until the child closes the pty (generous: a loaded machine can be slow to run its exit)
        while select.select([fd], [], [], 60)[0]:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:  # the child closed the pty
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "\x1b[?1049h" in text and text.rstrip().endswith("\x1b[?25h\x1b[?1049l")
    assert "Traceback" not in text

    w.update()
    s = w.state.summary()
    assert s["step"] == 6 and s["restarts"] == err.count("[restart after step") == 2
    assert s == dashboard.load(w.path).summary()
    assert polls >= 2  # it saw the file grow, not just its end


@pytest.mark.parametrize("case", ["missing", "a_file", "no_records", "bad_interval"])
def test_bad_command_lines_give_one_error_line(tmp_path, case):
    target, extra = str(tmp_path / "nothing"), []
    if case == "a_file":
        target = str(tmp_path / "f.txt")
        open(target, "w").close()
    elif case == "no_records":
        target, extra = str(tmp_path), ["--png", str(tmp_path / "x.png")]
    elif case == "bad_interval":
        target, extra = str(tmp_path), ["--interval", "0"]
    p = subprocess.run([sys.executable, DASHBOARD, target, *extra], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- Weights & Biases
def test_wandb_without_wandb_installed_is_a_clear_error(tmp_path):
    if subprocess.run([sys.executable, "-c", "import wandb"], capture_output=True).returncode == 0:
        pytest.skip("wandb is installed here")
    out = tmp_path / "run"
    p = train(*SMALL, "--steps", "2", "--out", str(out), "--wandb", "myproject", check=False)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --wandb myproject") and "pip install wandb" in lines[0]
    assert not out.exists()  # refused before the run directory was made


FAKE_WANDB = '''
import json, os

def _note(*what):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps(what) + "\\n")

class _Config(dict):
    def update(self, d, allow_val_change=False):
        _note("config", d)

class _Run:
    def __init__(self, id):
        self.id, self.config = id, _Config()
    def define_metric(self, name, step_metric=None):
        _note("define_metric", name, step_metric)
    def log(self, d):
        _note("log", d)
    def finish(self):
        _note("finish")

def init(project=None, id=None, resume=None, name=None, config=None):
    _note("init", project, id, resume, name)
    return _Run(id or "fake-run")
'''


def test_wandb_gets_every_record_and_one_run_across_a_restart(tmp_path):
    """--wandb with a stand-in for the wandb package that notes each call: the same W&B run id is
    continued after the exec() restart, and the losses logged are those of metrics.jsonl."""
    (tmp_path / "fake" / "wandb").mkdir(parents=True)
    (tmp_path / "fake" / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    log = tmp_path / "calls.jsonl"
    log.write_text("")
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), ROOT]), FAKE_WANDB_LOG=str(log))
    p = subprocess.run([sys.executable, TRAIN, *SMALL, "--steps", "4", "--pipeline", "static", "--compile-budget",
                        "16", "--out", out, "--wandb", "proj"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    inits = [c for c in calls if c[0] == "init"]
    assert len(inits) == 2 and inits[0][1] == "proj" and inits[0][2] is None
    assert inits[1][2] == "fake-run"  # the restarted process continues the first process's W&B run
    assert sum(c[0] == "finish" for c in calls) == 2
    logged = [c[1] for c in calls if c[0] == "log"]
    assert {d["step"]: d["train/loss"] for d in logged if "train/loss" in d} == \
        {r["step"]: r["loss"] for r in step_records(out)}
    assert [d["run/restarts"] for d in logged if "run/restarts" in d] == [1]
    assert ["define_metric", "*", "step"] in calls
