"""A run directory (``--out``) belongs to one run, held by one process at a time.

- Temporary files: every file a writer of anetrain creates before renaming it into place is
  ``<dir>/.anetrain-tmp-<pid>-<final name>`` (``temp_path``), so a process killed mid-write leaves
  a file that says whose it was; ``remove_stale_temps`` deletes those whose process is gone.
- The lock: ``RunLock`` holds ``fcntl.flock`` on ``<dir>/.anetrain.lock`` (which records the
  holder's pid for the message a second process gets). flock belongs to the open file, so the
  kernel drops it when the holder exits or crashes; no stale lock is ever left to clean up.
  The exec() restart keeps the same open file across ``os.execve`` (``handover``): the new
  process image finds its fd in ``ANETRAIN_LOCK_FD`` and adopts it, so there is no moment at
  which the directory is unlocked and another process could take it.
- Ownership: ``run_files`` lists another run's checkpoints, metrics and report in a directory,
  and ``archive`` moves them aside for ``--overwrite``.
"""
import errno
import fcntl
import glob
import os
import time

from .errors import UsageError

TMP_PREFIX = ".anetrain-tmp-"
LOCK_NAME = ".anetrain.lock"
LOCK_ENV = "ANETRAIN_LOCK_FD"   # set only for the image an exec() restart starts
METRICS_NAME = "metrics.jsonl"
REPORT_NAME = "report.png"     # written from the metrics at the end of a run (anetrain/dashboard.py)


def temp_path(path):
    """Where to write ``path`` before renaming it into place: beside it, named for this process."""
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f"{TMP_PREFIX}{os.getpid()}-{name}")


def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path, write, binary=True):
    """Create or replace ``path`` with what ``write(file)`` writes: into ``temp_path(path)``,
    fsynced, renamed over ``path``, directory fsynced; a crash leaves the old file or the whole new
    one, and a failure (a full disk) leaves no temporary file. The new file gets the umask's mode."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(run_dir):
    """Delete ``temp_path`` files of processes that no longer run (a kill mid-write), and this
    process's own (it writes nothing while starting, so any such file predates it); returns them."""
    removed = []
    for p in glob.glob(os.path.join(glob.escape(run_dir), TMP_PREFIX + "*")):
        pid = os.path.basename(p)[len(TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
            continue
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def run_files(run_dir, checkpoints):
    """The files of a run in ``run_dir``: its checkpoints (given), its metrics and its report, where
    present."""
    others = [os.path.join(run_dir, name) for name in (METRICS_NAME, REPORT_NAME)]
    return list(checkpoints) + [f for f in others if os.path.exists(f)]


def archive(run_dir, files):
    """Move ``files`` into a new ``<run_dir>/archive-<timestamp>/``; returns that directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = os.path.join(run_dir, f"archive-{stamp}"), 1
    while True:
        try:
            os.mkdir(dest)
            break
        except FileExistsError:
            n += 1
            dest = os.path.join(run_dir, f"archive-{stamp}-{n}")
    for f in files:
        os.replace(f, os.path.join(dest, os.path.basename(f)))
    return dest


class RunLock:
    """An exclusive advisory lock on a run directory for the life of this run (across restarts)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.file = self._adopt() or self._take()

    def _adopt(self):
        """The lock file inherited from the image before an exec() restart, if it is this directory's."""
        fd = os.environ.pop(LOCK_ENV, "")
        if not fd.isdigit():
            return None
        try:
            held, here = os.fstat(int(fd)), os.stat(self.path)
        except OSError:
            return None
        if (held.st_dev, held.st_ino) != (here.st_dev, here.st_ino):
            return None
        f = os.fdopen(int(fd), "r+")
        os.set_inheritable(f.fileno(), False)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: the same open file
        return f

    def _take(self):
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            f.seek(0)
            holder = f.read().strip()
            f.close()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise UsageError(f"{self.run_dir} is in use by another run{who}; wait for it to finish "
                             f"or choose another --out")
        return f

    def record_pid(self):
        """Write this process's pid into the lock file (after the run has accepted the directory,
        so a refused start leaves the file as it was)."""
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def handover(self):
        """Environment entries that let the image started by os.execve keep this lock: the fd
        is made inheritable on purpose (Python opens files close-on-exec), so the open file and
        with it the flock survive the exec."""
        os.set_inheritable(self.file.fileno(), True)
        return {LOCK_ENV: str(self.file.fileno())}

    def release(self):
        if not self.file.closed:
            self.file.close()
