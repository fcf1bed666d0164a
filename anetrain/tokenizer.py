"""Tokenizers for data and samples, behind one small interface: a sentencepiece model
(``tokenizer.model``, llama2.c's and the shipped data's) or a Hugging Face ``tokenizer.json``
(Qwen3's, Llama 3's, ...) through the ``tokenizers`` library.

Each document of the training data starts with one token, ``doc_start``, and samples start from
it too: sentencepiece's BOS (id 1, as llama2.c's pretokenizer writes it). A tokenizer.json holds
no such role itself; the files beside it do: ``tokenizer_config.json``'s ``bos_token``, else
``config.json``'s ``bos_token_id`` (Qwen3 has no BOS token and names ``<|endoftext|>``, its
document separator, there), else the vocabulary's ``<|endoftext|>`` (GPT-2's and Qwen's
separator; so a tokenizer.json copied without the model's config.json keeps its start). Samples
stop at ``stop`` ids: EOS, and for a tokenizer.json also the next document's start.
"""
import json
import os

from .errors import UsageError

HF_NAME = "tokenizer.json"
HF_SETTINGS = "tokenizer_config.json"  # the special tokens' roles, beside tokenizer.json
DOC_SEPARATOR = "<|endoftext|>"


class Tokenizer:
    """encode_batch(texts) -> [[id, ...]] (no special tokens added), decode(ids) -> str, and the
    ids ``doc_start``, ``eos`` (None when it has none) and ``stop`` (see the module docstring);
    ``vocab_size`` counts every id; ``processor`` is the library's own object (a
    SentencePieceProcessor or a tokenizers.Tokenizer)."""

    def __init__(self, path, processor, encode_batch, decode, vocab_size, doc_start, eos):
        self.path, self.processor, self.encode_batch, self.decode = path, processor, encode_batch, decode
        self.vocab_size, self.doc_start, self.eos = vocab_size, doc_start, eos

    @property
    def stop(self):
        """Where a sample ends: at EOS; for a tokenizer.json also at the next document's start."""
        ids = [self.eos] + ([self.doc_start] if self.path.endswith(".json") else [])
        return tuple(dict.fromkeys(i for i in ids if i is not None))


def load(path):
    """The tokenizer at ``path``: a file ending in .json is a Hugging Face tokenizer.json, any
    other a sentencepiece model. UsageError saying what is wrong when it is neither."""
    if not os.path.isfile(path):
        raise UsageError(f"tokenizer {path} is not a file; give a sentencepiece tokenizer.model or a Hugging Face "
                         f"tokenizer.json")
    return _load_hf(path) if path.endswith(".json") else _load_sentencepiece(path)


def _load_sentencepiece(path):
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
        raise UsageError(f"{path}: not a sentencepiece tokenizer model ({sentencepiece_reason(e)}); give a "
                         f"tokenizer.model or a Hugging Face tokenizer.json")
    return Tokenizer(path, sp, lambda texts: sp.encode(list(texts)), sp.decode, sp.get_piece_size(), sp.bos_id(),
                     sp.eos_id() if sp.eos_id() >= 0 else None)


def sentencepiece_reason(e):
    """sentencepiece's own sentence from one of its errors, without the source location."""
    return str(e).rsplit("] ", 1)[-1].strip().rstrip(".")


def _load_hf(path):
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise UsageError(f"{path} is a Hugging Face tokenizer.json, which needs the tokenizers library "
                         f"(pip install tokenizers)")
    try:
        tok = HFTokenizer.from_file(path)
    except Exception as e:  # the library raises its own exception type for any malformed file
        raise UsageError(f"{path}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})")
    here = os.path.dirname(os.path.abspath(path))
    start = _special_id(tok, here, "bos")
    start = start if start is not None else tok.token_to_id(DOC_SEPARATOR)
    if start is None:
        raise UsageError(f"{path}: no start-of-document token: neither {HF_SETTINGS}'s bos_token nor config.json's "
                         f"bos_token_id beside it names one, and the vocabulary has no {DOC_SEPARATOR}")
    eos = _special_id(tok, here, "eos")

    def encode_batch(texts):
        return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    return Tokenizer(path, tok, encode_batch, lambda ids: tok.decode(list(ids)),
                     tok.get_vocab_size(with_added_tokens=True), start, eos)


def _special_id(tok, here, role):
    """The id of the ``role`` ("bos", "eos") token from tokenizer_config.json, else config.json."""
    settings = _json(os.path.join(here, HF_SETTINGS))
    token = settings.get(f"{role}_token")
    if isinstance(token, dict):  # {"content": "<s>", ...} in older files
        token = token.get("content")
    if isinstance(token, str) and tok.token_to_id(token) is not None:
        return tok.token_to_id(token)
    i = _json(os.path.join(here, "config.json")).get(f"{role}_token_id")
    if isinstance(i, list):  # several eos ids: the first
        i = i[0] if i else None
    return i if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < tok.get_vocab_size(True) else None


def _json(path):
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def beside(model_path):
    """The tokenizer that came with a Hugging Face model directory (its tokenizer.json, else its
    sentencepiece tokenizer.model), or None."""
    if not os.path.isdir(model_path):
        return None
    for name in (HF_NAME, "tokenizer.model"):
        if os.path.isfile(os.path.join(model_path, name)):
            return os.path.join(model_path, name)
    return None
