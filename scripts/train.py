#!/usr/bin/env python3
"""Train a Llama-2-style model with anetrain. `python scripts/train.py --help` lists every setting.

    python scripts/train.py                   # the tiny preset on the shipped stories, in runs/default
    python scripts/train.py --resume          # carry on from the newest checkpoint in --out
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
