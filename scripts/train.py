#!/usr/bin/env python3
"""Train a Llama-2-style model with anetrain. `python scripts/train.py --help` lists every setting.

    python scripts/train.py                   # the tiny preset on the shipped stories, in runs/default
    python scripts/train.py --resume          # carry on from the newest checkpoint in --out
"""
import os
import signal
import sys

# Ctrl-C and SIGTERM are held back until the run has its handlers (Run.run unblocks them in this,
# the main thread). Blocked here, before any import starts a thread (BLAS, the thread pool), every
# other thread inherits the block, so these signals only ever reach the main thread: blocked
# again across the exec() restart, one that arrives then stays pending for the new image instead
# of being taken by another thread and lost.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
