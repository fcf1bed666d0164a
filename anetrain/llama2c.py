"""llama2.c file formats: the legacy model ``.bin`` (export version 0) and ``tokenizer.bin``
(written from a sentencepiece model, read into a ``Tokenizer``).

Model file layout (all little-endian; what llama2.c's export.py ``legacy_export`` writes and
run.c reads):

- header, 7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len.
  A negative vocab_size means the classifier (``output.weight``) is stored separately.
- float32 tensors, tensor-major (each kind for all layers before the next kind):
  tok_embeddings [vocab, dim]; attention_norm [L, dim]; wq [L, n_heads*hd, dim];
  wk [L, n_kv_heads*hd, dim]; wv [L, n_kv_heads*hd, dim]; wo [L, dim, n_heads*hd];
  ffn_norm [L, dim]; w1 [L, hidden, dim]; w2 [L, dim, hidden]; w3 [L, hidden, dim]; norm [dim];
  two legacy RoPE tables, cos then sin of pos * 10000^(-2i/hd), each [seq_len, hd/2]
  (hd = dim / n_heads); output [vocab, dim] only when unshared.

Arrays are named as llama2.c's model.py names its parameters (``tok_embeddings.weight``,
``layers.{i}.attention.wq.weight``, ``layers.{i}.feed_forward.w1.weight``, ``norm.weight``, ...).

tokenizer.bin: uint32 max_token_length, then per token: float32 score, uint32 byte length, the
UTF-8 bytes. Pieces are sentencepiece's with "\u2581" turned into a space, BOS written as
"\\n<s>\\n" and EOS as "\\n</s>\\n", as llama2.c's tokenizer.py exports them.
"""
import os
import struct

import numpy as np

from .config import ModelConfig
from .errors import AnetrainError, ModelFileError

HEADER = struct.Struct("<7i")


def layer_names(i):
    """The per-layer parameter names of layer ``i`` (model.py naming)."""
    return {
        "attention_norm": f"layers.{i}.attention_norm.weight",
        "wq": f"layers.{i}.attention.wq.weight",
        "wk": f"layers.{i}.attention.wk.weight",
        "wv": f"layers.{i}.attention.wv.weight",
        "wo": f"layers.{i}.attention.wo.weight",
        "ffn_norm": f"layers.{i}.ffn_norm.weight",
        "w1": f"layers.{i}.feed_forward.w1.weight",
        "w2": f"layers.{i}.feed_forward.w2.weight",
        "w3": f"layers.{i}.feed_forward.w3.weight",
    }


LAYER_ORDER = ("attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")


def layer_shapes(cfg):
    d, h, q, kv = cfg.dim, cfg.hidden_dim, cfg.q_dim, cfg.kv_dim
    return {"attention_norm": (d,), "wq": (q, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, q),
            "ffn_norm": (d,), "w1": (h, d), "w2": (d, h), "w3": (h, d)}


def weight_shapes(cfg, shared_classifier=True):
    """Every parameter's name and shape, in llama2.c's naming."""
    shapes = {"tok_embeddings.weight": (cfg.vocab_size, cfg.dim)}
    for i in range(cfg.n_layers):
        names = layer_names(i)
        for kind, shape in layer_shapes(cfg).items():
            shapes[names[kind]] = shape
    shapes["norm.weight"] = (cfg.dim,)
    if not shared_classifier:
        shapes["output.weight"] = (cfg.vocab_size, cfg.dim)
    return shapes


def rope_tables(head_dim, seq_len):
    """The legacy freq_cis tables llama2.c writes: cos and sin of pos * 10000^(-2i/head_dim)."""
    inv = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2)[: head_dim // 2].astype(np.float32) / head_dim))
    angles = np.outer(np.arange(seq_len, dtype=np.float32), inv.astype(np.float32)).astype(np.float32)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def expected_bytes(cfg, shared):
    """The exact size of a legacy file for ``cfg``, by arithmetic (never by listing shapes, which
    a hostile header with millions of layers would turn into a memory blow-up)."""
    floats = cfg.n_params() + (0 if shared else cfg.vocab_size * cfg.dim)
    return HEADER.size + 4 * (floats + cfg.seq_len * cfg.head_dim)  # + two RoPE tables of seq_len * hd/2


def read_header(path, data):
    if len(data) < HEADER.size:
        raise ModelFileError(f"{path}: {len(data)} bytes is too short for the 28-byte llama2.c header")
    dim, hidden, layers, heads, kv_heads, vocab, seq = HEADER.unpack_from(data)
    if min(dim, hidden, layers, heads, kv_heads, seq, abs(vocab)) <= 0:
        raise ModelFileError(f"{path}: header has a non-positive size {(dim, hidden, layers, heads, kv_heads, vocab, seq)}; "
                             f"not a llama2.c legacy model file")
    try:
        cfg = ModelConfig(name=os.path.basename(path), dim=dim, hidden_dim=hidden, n_layers=layers,
                          n_heads=heads, n_kv_heads=kv_heads, vocab_size=abs(vocab), seq_len=seq)
    except AnetrainError as e:
        raise ModelFileError(f"{path}: header describes an impossible model ({e})")
    return cfg, vocab > 0


def read_model(path):
    """(ModelConfig, dict of float32 arrays) from a llama2.c legacy ``.bin``; ``output.weight``
    is present only when the file's classifier is unshared. The arrays are read-only views of
    the file's bytes, read once (no second copy of the weights). ModelFileError when the path is not a
    readable file or its size does not match its header, checked before any weight is read."""
    try:
        with open(path, "rb", buffering=0) as f:  # unbuffered: read() below is one read of the whole file, no join
            size = os.fstat(f.fileno()).st_size
            cfg, shared = read_header(path, f.read(HEADER.size))
            want = expected_bytes(cfg, shared)
            if size != want:
                raise ModelFileError(
                    f"{path}: {size} bytes, but its header (dim {cfg.dim}, {cfg.n_layers} layers, vocab "
                    f"{cfg.vocab_size}, {'shared' if shared else 'unshared'} classifier) needs exactly {want}; "
                    f"the file is truncated or not a llama2.c legacy model")
            f.seek(0)
            data = f.read()
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory; give the path of a llama2.c model .bin")
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}; give the path of a llama2.c model .bin")
    floats = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    pos = 0

    def take(shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = floats[pos:pos + n].reshape(shape).astype(np.float32, copy=False)  # a view of the file's bytes
        pos += n
        return a

    arrays = {"tok_embeddings.weight": take((cfg.vocab_size, cfg.dim))}
    shapes = layer_shapes(cfg)
    for kind in LAYER_ORDER:
        stacked = take((cfg.n_layers,) + shapes[kind])
        for i in range(cfg.n_layers):
            arrays[layer_names(i)[kind]] = stacked[i]
    arrays["norm.weight"] = take((cfg.dim,))
    pos += cfg.seq_len * cfg.head_dim  # skip the legacy RoPE tables
    if not shared:
        arrays["output.weight"] = take((cfg.vocab_size, cfg.dim))
    return cfg, arrays


def write_model(path, cfg, arrays):
    """Write ``arrays`` (model.py names) as a llama2.c legacy ``.bin`` for ``cfg``.

    The classifier is written as unshared (negative vocab in the header) only when
    ``output.weight`` is given and differs from ``tok_embeddings.weight``."""
    out_w = arrays.get("output.weight")
    shared = out_w is None or np.array_equal(out_w, arrays["tok_embeddings.weight"])
    shapes = weight_shapes(cfg, shared)
    for name, shape in shapes.items():
        if name not in arrays:
            raise ModelFileError(f"cannot write {path}: weight {name} is missing")
        if tuple(np.shape(arrays[name])) != shape:
            raise ModelFileError(f"cannot write {path}: {name} has shape {tuple(np.shape(arrays[name]))}, "
                                 f"the config needs {shape}")
    vocab = cfg.vocab_size if shared else -cfg.vocab_size
    cos, sin = rope_tables(cfg.head_dim, cfg.seq_len)

    def put(f, a):
        f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())

    def write(f):
        f.write(HEADER.pack(cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads,
                            vocab, cfg.seq_len))
        put(f, arrays["tok_embeddings.weight"])
        for kind in LAYER_ORDER:
            for i in range(cfg.n_layers):
                put(f, arrays[layer_names(i)[kind]])
        put(f, arrays["norm.weight"])
        put(f, cos)
        put(f, sin)
        if not shared:
            put(f, arrays["output.weight"])

    write_whole_file(path, write)


def write_whole_file(path, write):
    """Call ``write(f)`` on a file that appears at ``path`` only once complete: a regular file is
    written beside it and renamed over it, so a full disk or an interrupt leaves no partial model;
    a device or pipe (e.g. /dev/stdout) is written in place. ModelFileError on any OS error."""
    if os.path.isdir(path):
        raise ModelFileError(f"cannot write {path}: it is a directory; give a file name such as {path}/model.bin")
    in_place = os.path.exists(path) and not os.path.isfile(path)
    tmp = path if in_place else f"{path}.tmp-{os.getpid()}"
    try:
        try:
            with open(tmp, "wb") as f:
                write(f)
            if not in_place:
                os.replace(tmp, path)
        except BaseException:
            if not in_place and os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise ModelFileError(f"cannot write {path}: {e.strerror}; choose a writable path with free space")


def tokenizer_pieces(sp):
    """(bytes, score) per id of a sentencepiece processor, as llama2.c's tokenizer.bin stores them."""
    out = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        out.append((piece.replace("\u2581", " ").encode("utf-8"), float(sp.get_score(i))))
    return out


def write_tokenizer_bin(path, sp):
    """Export a sentencepiece processor as llama2.c's tokenizer.bin."""
    pieces = tokenizer_pieces(sp)

    def write(f):
        f.write(struct.pack("<I", max(len(b) for b, _ in pieces)))
        for b, score in pieces:
            f.write(struct.pack("<fI", score, len(b)))
            f.write(b)

    write_whole_file(path, write)


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


class Tokenizer:
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
