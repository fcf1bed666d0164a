"""Helpers shared by the benchmarks in scripts/."""
import json
import resource
import subprocess
import sys
import time


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
