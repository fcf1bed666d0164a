"""Helpers shared by the benchmarks in scripts/."""
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
