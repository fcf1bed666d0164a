#!/usr/bin/env bash
# Regenerate the shipped corpus, tokenizer and shards in data/ (same bytes on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
python data/make_corpus.py --stories 8000 --seed 1 --out data/stories.jsonl
python scripts/prepare_data.py data/stories.jsonl --vocab-size 1024 --val-fraction 0.05 --out data
rm data/stories.jsonl
