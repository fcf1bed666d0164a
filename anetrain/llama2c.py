"""llama2.c file formats: model ``.bin`` files of export versions 0 (legacy) and 1, and ``tokenizer.bin``
(written from a sentencepiece model, read into a ``Tokenizer``).

Model files hold float32 tensors, little-endian, tensor-major (each kind for all layers before
the next kind), as llama2.c's export.py writes them and run.c reads them:

- version 0 (``legacy_export``): header of 7 int32: dim, hidden_dim, n_layers, n_heads,
  n_kv_heads, vocab_size, seq_len, where a negative vocab_size means the classifier
  (``output.weight``) is stored separately. Then tok_embeddings [vocab, dim]; attention_norm
  [L, dim]; wq [L, n_heads*hd, dim]; wk [L, n_kv_heads*hd, dim]; wv [L, n_kv_heads*hd, dim];
  wo [L, dim, n_heads*hd]; ffn_norm [L, dim]; w1 [L, hidden, dim]; w2 [L, dim, hidden];
  w3 [L, hidden, dim]; norm [dim]; two RoPE tables, cos then sin of pos * 10000^(-2i/hd), each
  [seq_len, hd/2] (hd = dim / n_heads); output [vocab, dim] only when unshared.
- version 1 (``version1_export``): a 256-byte header: uint32 magic 0x616b3432 ("ak42"), int32
  version 1, the same 7 int32 (vocab_size positive), uint8 shared_classifier, zeros to byte 256.
  Then attention_norm [L, dim]; ffn_norm [L, dim]; norm [dim]; tok_embeddings; wq; wk; wv; wo;
  w1; w2; w3; output only when not shared. No RoPE tables.

Neither header holds RMSNorm's epsilon or RoPE's theta: run.c uses 1e-5 and 10000, so a model
with other values cannot be written as a llama2.c file; nor a model of the Qwen3 family (heads
wider than dim / n_heads, QK-norm), which run.c does not compute.

Arrays are named as llama2.c's model.py names its parameters (``tok_embeddings.weight``,
``layers.{i}.attention.wq.weight``, ``layers.{i}.feed_forward.w1.weight``, ``norm.weight``, ...),
and the Qwen3 family's QK-norm gains ``layers.{i}.attention.q_norm.weight`` / ``k_norm.weight``.

tokenizer.bin: uint32 max_token_length, then per token: float32 score, uint32 byte length, the
UTF-8 bytes. Pieces are sentencepiece's with "\u2581" turned into a space, BOS written as
"\\n<s>\\n" and EOS as "\\n</s>\\n", as llama2.c's tokenizer.py exports them.
"""
import os
import struct

import numpy as np

from .config import ModelConfig, layer_param_shapes, native_model_config
from .errors import AnetrainError, ModelFileError
from .tokenizer import Llama2cTokenizer as Tokenizer, read_tokenizer_bin  # noqa: F401  (llama2.c's file formats, both ways)

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
        "q_norm": f"layers.{i}.attention.q_norm.weight",
        "k_norm": f"layers.{i}.attention.k_norm.weight",
    }


LAYER_ORDER = ("attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")


def weight_shapes(cfg):
    """Every parameter's name and shape, in llama2.c's naming (the model's own list, so
    ``output.weight`` exactly when the classifier is untied)."""
    return {f"{name}.weight": tuple(shape) for name, shape, _ in native_model_config(cfg).param_specs()}


def rope_tables(head_dim, seq_len):
    """The legacy freq_cis tables llama2.c writes: cos and sin of pos * 10000^(-2i/head_dim)."""
    inv = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2)[: head_dim // 2].astype(np.float32) / head_dim))
    angles = np.outer(np.arange(seq_len, dtype=np.float32), inv.astype(np.float32)).astype(np.float32)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


VERSIONS = (0, 1)
MAGIC = 0x616B3432                      # "ak42" read as a little-endian uint32
V1_HEADER = struct.Struct("<Ii7iB")     # magic, version, the 7 sizes, shared_classifier
V1_HEADER_BYTES = 256
ROPE_TABLES = ("rope.cos", "rope.sin")  # the v0 file's RoPE tables: written, skipped on reading
RUN_C_NORM_EPS, RUN_C_ROPE_THETA = 1e-5, 10000.0


def header_bytes(version):
    return HEADER.size if version == 0 else V1_HEADER_BYTES


def file_layout(cfg, version, shared):
    """(name, shape) of every float32 block of a ``version`` file, in file order."""
    shapes = layer_param_shapes(cfg)

    def each_layer(*kinds):
        return [(layer_names(i)[kind], shapes[kind]) for kind in kinds for i in range(cfg.n_layers)]

    embedding = [("tok_embeddings.weight", (cfg.vocab_size, cfg.dim))]
    norm = [("norm.weight", (cfg.dim,))]
    if version == 0:
        rope = [(name, (cfg.seq_len, cfg.head_dim // 2)) for name in ROPE_TABLES]
        order = embedding + each_layer(*LAYER_ORDER) + norm + rope
    else:
        order = (each_layer("attention_norm", "ffn_norm") + norm + embedding
                 + each_layer("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    if not shared:
        order.append(("output.weight", (cfg.vocab_size, cfg.dim)))
    return order


def expected_bytes(cfg, version=0):
    """The exact size of a ``version`` file for ``cfg`` (its classifier counted when untied), by
    arithmetic (never by listing shapes, which a hostile header with millions of layers would turn
    into a memory blow-up)."""
    floats = cfg.n_params()
    if version == 0:
        floats += cfg.seq_len * cfg.head_dim  # two RoPE tables of seq_len * hd/2
    return header_bytes(version) + 4 * floats


def read_header(path, data):
    """(ModelConfig, shared classifier, version) from the first bytes of a model file."""
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == MAGIC:
        if len(data) < V1_HEADER_BYTES:
            raise ModelFileError(f"{path}: {len(data)} bytes is too short for the {V1_HEADER_BYTES}-byte "
                                 f"llama2.c version 1 header")
        _, version, *sizes, shared = V1_HEADER.unpack_from(data)
        if version != 1:
            raise ModelFileError(f"{path}: llama2.c export version {version}; anetrain reads versions 0 and 1 "
                                 f"(float32), so export the model again with llama2.c's --version 1")
        if sizes[5] <= 0 or shared not in (0, 1):
            raise ModelFileError(f"{path}: version 1 header has vocab_size {sizes[5]} and shared_classifier "
                                 f"{shared}; not a llama2.c model file")
    else:
        if len(data) < HEADER.size:
            raise ModelFileError(f"{path}: {len(data)} bytes is too short for the 28-byte llama2.c header")
        version, sizes = 0, list(HEADER.unpack_from(data))
        shared = sizes[5] > 0
        sizes[5] = abs(sizes[5])
    dim, hidden, layers, heads, kv_heads, vocab, seq = sizes
    if min(sizes) <= 0:
        raise ModelFileError(f"{path}: header has a non-positive size {tuple(sizes)}; not a llama2.c model file")
    try:
        cfg = ModelConfig(name=os.path.basename(path), dim=dim, hidden_dim=hidden, n_layers=layers,
                          n_heads=heads, n_kv_heads=kv_heads, vocab_size=vocab, seq_len=seq,
                          tie_embeddings=bool(shared))
    except AnetrainError as e:
        raise ModelFileError(f"{path}: header describes an impossible model ({e})")
    return cfg, bool(shared), version


def open_model(path):
    """(open file, ModelConfig, shared classifier, version) after checking that the file's size is
    exactly what its header needs, before any weight is read. ModelFileError otherwise."""
    try:
        f = open(path, "rb", buffering=0)  # unbuffered: read_model's whole-file read is then one read, not a join
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory; give the path of a llama2.c model .bin")
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}; give the path of a llama2.c model .bin")
    try:
        size = os.fstat(f.fileno()).st_size
        cfg, shared, version = read_header(path, f.read(V1_HEADER_BYTES))
        want = expected_bytes(cfg, version)
        if size != want:
            raise ModelFileError(
                f"{path}: {size} bytes, but its version {version} header (dim {cfg.dim}, {cfg.n_layers} layers, "
                f"vocab {cfg.vocab_size}, {'shared' if shared else 'unshared'} classifier) needs exactly {want}; "
                f"the file is truncated or not a llama2.c model")
    except BaseException:
        f.close()
        raise
    return f, cfg, shared, version


def read_config(path):
    """The ModelConfig of a llama2.c model file, its size checked against the header."""
    f, cfg, _, _ = open_model(path)
    f.close()
    return cfg


def read_model(path):
    """(ModelConfig, dict of float32 arrays) from a llama2.c model ``.bin`` of version 0 or 1
    (told apart by version 1's magic); ``output.weight`` is present only when the file's
    classifier is unshared. The arrays are read-only views of the file's bytes, read once (no
    second copy of the weights). ModelFileError when the path is not a readable file or its size
    does not match its header."""
    f, cfg, shared, version = open_model(path)
    try:
        f.seek(0)
        data = f.read()
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}")
    finally:
        f.close()
    floats = np.frombuffer(data, dtype="<f4", offset=header_bytes(version))
    arrays, pos = {}, 0
    for name, shape in file_layout(cfg, version, shared):
        n = int(np.prod(shape))
        if name not in ROPE_TABLES:
            arrays[name] = floats[pos:pos + n].reshape(shape).astype(np.float32, copy=False)
        pos += n
    return cfg, arrays


def check_weights(path, cfg, arrays):
    """Whether the classifier is shared (``cfg.tie_embeddings``), after checking every tensor
    ``cfg`` needs is there with its shape (a tied model may also bring an ``output.weight`` equal to
    its embedding); ModelFileError naming ``path``, the file about to be written, otherwise."""
    out_w = arrays.get("output.weight")
    if cfg.tie_embeddings and out_w is not None and not np.array_equal(out_w, arrays.get("tok_embeddings.weight")):
        raise ModelFileError(f"cannot write {path}: the config ties the classifier to the embedding, but "
                             f"output.weight differs from it")
    for name, shape in weight_shapes(cfg).items():
        if name not in arrays:
            raise ModelFileError(f"cannot write {path}: weight {name} is missing")
        if tuple(np.shape(arrays[name])) != shape:
            raise ModelFileError(f"cannot write {path}: {name} has shape {tuple(np.shape(arrays[name]))}, "
                                 f"the config needs {shape}")
    return cfg.tie_embeddings


def write_model(path, cfg, arrays, version=0):
    """Write ``arrays`` (model.py names) as a llama2.c model ``.bin`` of export ``version`` (0 or 1),
    the classifier unshared when ``cfg`` unties it."""
    if version not in VERSIONS:
        raise ModelFileError(f"cannot write {path}: llama2.c export version {version}; choose 0 or 1")
    if (cfg.norm_eps, cfg.rope_theta) != (RUN_C_NORM_EPS, RUN_C_ROPE_THETA):
        raise ModelFileError(f"cannot write {path}: the model has RMSNorm eps {cfg.norm_eps:g} and RoPE theta "
                             f"{cfg.rope_theta:g}, but llama2.c files cannot say so and run.c uses "
                             f"{RUN_C_NORM_EPS:g} and {RUN_C_ROPE_THETA:g}; export to Hugging Face instead")
    if cfg.qk_norm or cfg.head_dim * cfg.n_heads != cfg.dim:
        raise ModelFileError(f"cannot write {path}: the model has {'QK-norm and ' if cfg.qk_norm else ''}heads of "
                             f"{cfg.head_dim} (q_dim {cfg.q_dim}, dim {cfg.dim}), which run.c does not compute; "
                             f"export to Hugging Face instead")
    shared = check_weights(path, cfg, arrays)
    sizes = (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads)
    tensors = dict(zip(ROPE_TABLES, rope_tables(cfg.head_dim, cfg.seq_len))) if version == 0 else {}

    def write(f):
        if version == 0:
            f.write(HEADER.pack(*sizes, cfg.vocab_size if shared else -cfg.vocab_size, cfg.seq_len))
        else:
            header = V1_HEADER.pack(MAGIC, 1, *sizes, cfg.vocab_size, cfg.seq_len, int(shared))
            f.write(header + bytes(V1_HEADER_BYTES - len(header)))
        for name, _ in file_layout(cfg, version, shared):
            f.write(np.ascontiguousarray(tensors.get(name, arrays.get(name)), dtype="<f4").tobytes())

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
