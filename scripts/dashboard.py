#!/usr/bin/env python3
"""Follow a training run in the terminal as it writes its metrics.jsonl, or draw it as a PNG.

    python scripts/dashboard.py runs/default                  # live; Ctrl-C quits
    python scripts/dashboard.py runs/default --png report.png # the same view as a static image

The live view shows the train and validation loss curves, throughput, the step time by phase,
compiles and restarts, where the kernels run, the training process's CPU and memory, ANE power
on macOS (powermetrics needs root) and the latest text sample. It starts waiting when the run
has not logged yet and carries on through restarts and resumes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain import dashboard  # noqa: E402
from anetrain.errors import exit_on_error  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (train.py --out)")
    ap.add_argument("--png", metavar="FILE", help="write the view to this PNG file and exit")
    ap.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                    help="seconds between looks at the metrics file (default: 1)")
    ap.add_argument("--window", type=int, default=dashboard.WINDOW, metavar="N",
                    help=f"steps averaged for throughput and the time breakdown (default: {dashboard.WINDOW})")
    args = ap.parse_args()
    return dashboard.main(args.run_dir, png=args.png, interval_s=args.interval, window=args.window)


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
