#!/usr/bin/env python3
"""Turn text into token shards for training: tokenizer (trained or given), shards, tokenizer.bin.

Inputs (files or globs):
  *.txt    documents separated by lines reading <|endoftext|> (a file without one is one document)
  *.json   TinyStories shards: a JSON list of {"story": ...}
  *.jsonl  one {"story": ...} or {"text": ...} per line (what data/make_corpus.py writes)

Outputs in --out DIR: tokenizer.model (trained with --vocab-size, or a copy of --tokenizer),
tokenizer.bin (llama2.c format), train_NNN.bin and val_NNN.bin shards with .json sidecars (see
anetrain/data.py). Every document is stripped and encoded with BOS (id 1) in front and no EOS, as
llama2.c's pretokenizer does. The last --val-fraction of the documents go to the val shards.

With --tokenizer a Hugging Face tokenizer.json (a Qwen3 model directory's, say), the documents are
encoded by the tokenizers library, each with the tokenizer's start-of-document token in front
(anetrain/tokenizer.py says which: for Qwen3 <|endoftext|>); tokenizer.json and the
tokenizer_config.json beside it are copied to --out (no tokenizer.bin: that format is
sentencepiece's), and the shards hold uint32 ids when the vocabulary passes 65,535.

  python scripts/prepare_data.py data/stories.jsonl --vocab-size 1024 --out data
  python scripts/prepare_data.py 'TinyStories_all_data/*.json' --tokenizer tok.model --out ts
  python scripts/prepare_data.py notes.txt --tokenizer Qwen3-0.6B/tokenizer.json --out qwen_data
"""
import argparse
import contextlib
import glob
import io
import json
import os
import shutil
import sys
import tempfile

import sentencepiece as spm  # at start: a Ctrl-C inside its import would surface as an ImportError
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from anetrain import data, llama2c, tokenizer  # noqa: E402
from anetrain.errors import DataError, UsageError, exit_on_error  # noqa: E402

DOC_SEPARATOR = "<|endoftext|>"


def read_documents(path):
    """The documents of one input file, by its extension; DataError for a file that is not
    UTF-8 text or whose JSON records lack a string "story" (or "text") field."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; pass text, JSON or JSON-lines files (or a glob of them)")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); convert it to UTF-8 "
                        f"first, e.g. with iconv -t UTF-8")
    if path.endswith(".json"):
        try:
            docs = [rec["story"] for rec in json.loads(text)]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: expected a JSON list of {{\"story\": ...}} ({type(e).__name__}: {e})")
        return _strings(path, docs)
    if path.endswith(".jsonl"):
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    docs.append(rec["story"] if "story" in rec else rec["text"])
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{path}:{n}: expected {{\"story\": ...}} or {{\"text\": ...}} "
                                    f"({type(e).__name__}: {e})")
        return _strings(path, docs)
    return text.split("\n" + DOC_SEPARATOR + "\n") if DOC_SEPARATOR in text else [text]


def _strings(path, docs):
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise DataError(f"{path}: record {i}'s story is {type(d).__name__} {d!r:.40}, not a string; "
                            f"each story must be text")
    return docs


def expand_inputs(patterns):
    paths = []
    for pat in patterns:
        found = sorted(glob.glob(os.path.expanduser(pat)))
        if not found:
            raise DataError(f"no input files match {pat!r}")
        paths.extend(found)
    return paths


def training_sentences(docs):
    """Lines for the tokenizer trainer: one per paragraph (sentencepiece skips very long lines)."""
    for doc in docs:
        for line in doc.split("\n"):
            if line.strip():
                yield line.strip()


def train_tokenizer(docs, vocab_size, model_path):
    """Train a byte-fallback BPE sentencepiece model like llama2.c's (deterministic: one thread)."""
    spm.set_random_generator_seed(1)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(docs), model_writer=buf, model_type="bpe",
            vocab_size=vocab_size, self_test_sample_size=0, character_coverage=1.0, num_threads=1,
            split_digits=True, allow_whitespace_only_pieces=True, byte_fallback=True,
            unk_surface=" \u2047 ", normalization_rule_name="identity", input_sentence_size=0,
            shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as e:
        raise UsageError(f"cannot train a {vocab_size}-piece tokenizer on this text: {tokenizer.sentencepiece_reason(e)}; "
                         f"change --vocab-size (or give more text)")
    with open(model_path, "wb") as f:
        f.write(buf.getvalue())


def load_tokenizer(path):
    """The tokenizer to encode with (anetrain.tokenizer); a sentencepiece model must have llama2.c's
    BOS id 1."""
    tok = tokenizer.load(path)
    if not is_hf(path) and tok.doc_start != 1:
        raise UsageError(f"{path}: BOS id is {tok.doc_start}, llama2.c-style data needs BOS = 1")
    return tok


def is_hf(path):
    return path.endswith(".json")


@contextlib.contextmanager
def staged_out_dir(out):
    """A fresh directory inside ``out`` to write into; its files move into ``out`` only when the
    block succeeds, so a failure (bad tokenizer, full disk, Ctrl-C) leaves ``out`` as it was
    (and removes it if it was made here)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a directory; choose a directory")
    existed = os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
        stage = tempfile.mkdtemp(dir=out, prefix=".prepare_data-")
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror}; choose a writable directory")
    try:
        try:
            yield stage
            for name in sorted(os.listdir(stage)):
                os.replace(os.path.join(stage, name), os.path.join(out, name))
        except OSError as e:
            raise DataError(f"cannot write to --out {out}: {e.strerror}")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    os.rmdir(stage)


def encode_documents(tok, docs, writer, desc, batch=256):
    """Append the start-of-document token then the ids of each stripped document to ``writer``, in
    batches of documents; returns the number of tokens written."""
    n = 0
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=None) as bar:
        for start in range(0, len(docs), batch):
            chunk = docs[start:start + batch]
            for ids in tok.encode_batch([d.strip() for d in chunk]):
                writer.add([tok.doc_start] + list(ids))
                n += 1 + len(ids)
            bar.update(len(chunk))
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("inputs", nargs="+", help="text, JSON or JSON-lines files or globs")
    p.add_argument("--out", required=True, help="output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vocab-size", type=int, help="train a new tokenizer with this many pieces")
    src.add_argument("--tokenizer", help="use this sentencepiece tokenizer.model or Hugging Face tokenizer.json")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of documents (the last ones) written to val shards (default 0.05)")
    p.add_argument("--shard-tokens", type=int, default=50_000_000,
                   help="maximum tokens per shard file (default 50M)")
    a = p.parse_args(argv)
    if not 0 <= a.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    if a.shard_tokens < 1:
        raise UsageError(f"--shard-tokens must be at least 1, got {a.shard_tokens}")
    if a.vocab_size is not None and a.vocab_size < 1:
        raise UsageError(f"--vocab-size must be a positive number of pieces, got {a.vocab_size}")
    given = None
    if a.tokenizer:
        if not os.path.isfile(a.tokenizer):
            raise UsageError(f"--tokenizer {a.tokenizer} is not a file; pass a sentencepiece tokenizer.model or a "
                             f"Hugging Face tokenizer.json")
        given = load_tokenizer(a.tokenizer)  # refuse a non-tokenizer before anything is written

    docs = [d for path in expand_inputs(a.inputs) for d in read_documents(path)]
    if not any(d.strip() for d in docs):
        raise DataError("the inputs hold no text (every document is empty or blank)")
    with staged_out_dir(a.out) as stage:
        write_outputs(a, docs, given, stage)


def write_outputs(a, docs, given, stage):
    """The tokenizer, tokenizer.bin and the shards, written into ``stage``."""
    model_path = os.path.join(stage, "tokenizer.model")
    if given is None:
        print(f"training a {a.vocab_size}-piece tokenizer on {len(docs)} documents", file=sys.stderr)
        train_tokenizer(docs, a.vocab_size, model_path)
    elif is_hf(a.tokenizer):  # tokenizer.json, and the roles of its special tokens beside it
        shutil.copyfile(a.tokenizer, os.path.join(stage, tokenizer.HF_NAME))
        settings = os.path.join(os.path.dirname(os.path.abspath(a.tokenizer)), tokenizer.HF_SETTINGS)
        if os.path.isfile(settings):
            shutil.copyfile(settings, os.path.join(stage, tokenizer.HF_SETTINGS))
    else:
        shutil.copyfile(a.tokenizer, model_path)
    tok = given or load_tokenizer(model_path)
    if not is_hf(tok.path):  # llama2.c's tokenizer.bin is a sentencepiece model's pieces
        llama2c.write_tokenizer_bin(os.path.join(stage, "tokenizer.bin"), tok.processor)

    n_val = int(round(len(docs) * a.val_fraction))
    vocab = tok.vocab_size
    counts, written = [], []
    for prefix, part in (("train", docs[:len(docs) - n_val]), ("val", docs[len(docs) - n_val:])):
        writer = data.ShardWriter(stage, prefix, vocab, a.shard_tokens)
        counts.append(encode_documents(tok, part, writer, prefix))
        written += writer.close()
    print(f"{counts[0]} train + {counts[1]} val tokens (vocab {vocab}) -> "
          f"{', '.join(os.path.basename(w) for w in written)}", file=sys.stderr)


if __name__ == "__main__":
    exit_on_error(main)
