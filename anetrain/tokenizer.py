"""Tokenizers for data, samples and generation, behind one small interface: a sentencepiece model
(``tokenizer.model``, llama2.c's and the shipped data's), llama2.c's ``tokenizer.bin``, or a
Hugging Face ``tokenizer.json`` (Qwen3's, Llama 3's, ...) through the ``tokenizers`` library.

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
import struct

from .errors import ModelFileError, UsageError

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

    def encode(self, text):
        """The ids of one text (no special tokens added)."""
        return list(self.encode_batch([text])[0])

    @property
    def stop(self):
        """Where a sample ends: at EOS; for a tokenizer.json also at the next document's start."""
        ids = [self.eos] + ([self.doc_start] if self.path.endswith(".json") else [])
        return tuple(dict.fromkeys(i for i in ids if i is not None))


def load(path):
    """The tokenizer at ``path``: a file ending in .json is a Hugging Face tokenizer.json, any
    other a sentencepiece model. UsageError saying what is wrong when it is neither."""
    if not os.path.isfile(path):
        raise UsageError(f"tokenizer {path} is not a file; give a sentencepiece tokenizer.model, a llama2.c tokenizer.bin or a "
                         f"Hugging Face tokenizer.json")
    if path.endswith(".json"):
        return _load_hf(path)
    return _load_llama2c(path) if path.endswith(".bin") else _load_sentencepiece(path)


def _load_llama2c(path):
    t = Llama2cTokenizer.from_file(path)
    return Tokenizer(path, t, lambda texts: [t.encode(x) for x in texts], t.decode, t.get_piece_size(), t.bos_id(),
                     t.eos_id())


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


# ---------------------------------------------------------------- llama2.c's tokenizer.bin
def read_tokenizer_bin(path):
    """(max_token_length, [(bytes, score)]) from a llama2.c tokenizer.bin, read to end of file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ModelFileError(f"{path}: too short for a tokenizer.bin header")
    (max_len,) = struct.unpack_from("<I", data)
    pos, pieces = 4, []
    while pos < len(data):
        if pos + 8 > len(data):
            raise ModelFileError(f"{path}: truncated entry header at byte {pos}")
        score, n = struct.unpack_from("<fI", data, pos)
        pos += 8
        if n > max_len or pos + n > len(data):
            raise ModelFileError(f"{path}: token {len(pieces)} claims {n} bytes at offset {pos}, "
                                 f"beyond the file or max_token_length {max_len}")
        pieces.append((data[pos:pos + n], score))
        pos += n
    return max_len, pieces


class Llama2cTokenizer:
    """A tokenizer.bin as llama2.c's run.c uses it: text to ids by merging pieces, ids to text.

    encode: sentencepiece's dummy prefix (a space before the text), one piece per character (its
    UTF-8 bytes as ``<0xNN>`` pieces when the vocabulary lacks it), then the adjacent pair whose
    merge is a piece with the highest score is merged, again and again, until no merge is a piece;
    for a sentencepiece BPE model this gives sentencepiece's ids. decode: the pieces' bytes (byte
    pieces as their byte, BOS and EOS as nothing), the dummy prefix's space dropped. The method
    names are sentencepiece's, so either serves the generation code."""

    BOS, EOS = 1, 2  # sentencepiece's and llama2.c's

    def __init__(self, pieces):
        self.pieces = [b for b, _ in pieces]
        self.scores = [s for _, s in pieces]
        self.ids = {}
        for i, b in enumerate(self.pieces):
            self.ids.setdefault(b, i)
        self.byte_pieces = {}  # id of a <0xNN> piece -> its byte
        for n in range(256):
            i = self.ids.get(b"<0x%02X>" % n)
            if i is not None:
                self.byte_pieces[i] = n

    @classmethod
    def from_file(cls, path):
        return cls(read_tokenizer_bin(path)[1])

    def get_piece_size(self):
        return len(self.pieces)

    def bos_id(self):
        return self.BOS

    def eos_id(self):
        return self.EOS

    def encode(self, text):
        """Token ids of ``text`` (no BOS)."""
        if not text:
            return []
        byte_id = {n: i for i, n in self.byte_pieces.items()}
        ids = []
        for ch in " " + text:
            b = ch.encode("utf-8")
            if b in self.ids:
                ids.append(self.ids[b])
            else:  # byte fallback; without byte pieces, unknown (id 0)
                ids.extend(byte_id.get(n, 0) for n in b)
        while len(ids) > 1:
            best, at, merged = None, -1, -1
            for i in range(len(ids) - 1):
                m = self.ids.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if m is not None and (best is None or self.scores[m] > best):
                    best, at, merged = self.scores[m], i, m
            if at < 0:
                break
            ids[at:at + 2] = [merged]
        return ids

    def decode(self, ids):
        """The text of ``ids``; bytes that do not form UTF-8 become U+FFFD."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if i in (self.BOS, self.EOS):
                continue
            if i in self.byte_pieces:
                out.append(self.byte_pieces[i])
            else:
                out += self.pieces[i]
        text = out.decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") else text
