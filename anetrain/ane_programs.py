"""Hand-written MIL programs for the ANE self-test, probes and tests (scripts/selftest_ane.py,
probe.py, tests/test_ane.py), spelled in a given dialect.

Each function returns (mil_text, weights, input_shapes); weights maps
"@model_path/weights/<name>.bin" to blob-file bytes (coremltools MILBlob v2 layout, one fp16 blob
per file, its metadata record at offset 64). Every program has the shape of those known to run
on the ANE: the builder's buildInfo, fp16 [1, C, 1, W] tensors of at least [1, 64, 1, 32], and
one input, except where a program exists to exercise several inputs (attention, two_input_add).
"""
import struct

import numpy as np

from . import _native

BLOB_OFFSET = 64  # the BLOBFILE offset names the metadata record, not the data


def blob_file(values):
    """One fp16 blob: 64-byte header {count, version 2}, 64-byte record, data at 128."""
    data = np.ascontiguousarray(values, dtype=np.float16).tobytes()
    header = struct.pack("<II", 1, 2).ljust(64, b"\0")
    record = struct.pack("<IIQQQ", 0xDEADBEEF, 1, len(data), 128, 0).ljust(64, b"\0")
    return header + record + data


class Mil:
    """Spells literals, types and the program frame for one dialect (dict from anetrain.ane.dialect())."""

    def __init__(self, dialect):
        self.version = dialect["version"]
        self.opset = dialect["opset"]
        self.verbose = bool(dialect["verbose_scalars"])
        self.build_info = build_info(f"{self.version}/{self.opset}{'-verbose' if self.verbose else ''}")

    def scalar_type(self, dtype):
        return f"tensor<{dtype}, []>" if self.verbose else dtype

    def scalar(self, dtype, value):
        if dtype == "string":
            value = f'"{value}"'
        elif dtype == "bool":
            value = "true" if value else "false"
        elif dtype in ("fp16", "fp32"):
            # plain decimal, never exponent notation (docs/ane-rules.md, rule literal)
            value = np.format_float_positional(np.float16(value) if dtype == "fp16" else np.float32(value),
                                               unique=True, trim="0")
        return f"{self.scalar_type(dtype)}({value})"

    def name(self, n):
        return f"[name = {self.scalar('string', n)}]"

    def const(self, dtype, n, value):
        """A scalar const statement."""
        return f"{self.scalar_type(dtype)} {n} = const()[name = {self.scalar('string', n)}, val = {self.scalar(dtype, value)}];"

    def ints(self, n, values):
        t = f"tensor<int32, [{len(values)}]>"
        return f"{t} {n} = const()[name = {self.scalar('string', n)}, val = {t}([{', '.join(str(v) for v in values)}])];"

    def blob_const(self, n, shape, file):
        t = tensor("fp16", shape)
        path = self.scalar("string", f"@model_path/weights/{file}")
        off = self.scalar("uint64", BLOB_OFFSET)
        return f"{t} {n} = const()[name = {self.scalar('string', n)}, val = {t}(BLOBFILE(path = {path}, offset = {off}))];"

    def program(self, params, body, outputs):
        sig = ", ".join(f"{tensor('fp16', shape)} {n}" for n, shape in params)
        lines = [f"program({self.version})", self.build_info, "{", f"    func main<{self.opset}>({sig}) {{"]
        lines += [f"        {s}" for s in body]
        lines += [f"    }} -> ({', '.join(outputs)});", "}"]
        return "\n".join(lines) + "\n"


def build_info(dialect_string):
    """The buildInfo line the MIL builder (native/mil/builder.cpp) writes for this dialect."""
    b = _native.MilBuilder(dialect_string)
    b.output(b.input("x", "fp16", [1, 1, 1, 1]))
    return b.text().splitlines()[1]


def tensor(dtype, shape):
    return f"tensor<{dtype}, [{', '.join(str(d) for d in shape)}]>"


def linear(m, rng, cin=64, cout=128, seq=32):
    """y = W x as a 1x1 conv with BLOBFILE weights W [cout, cin, 1, 1]."""
    w = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float16)
    body = [
        m.ints("st", [1, 1]), m.ints("pd", [0, 0, 0, 0]), m.ints("dl", [1, 1]),
        m.const("int32", "gr", 1), m.const("string", "pt", "valid"),
        m.blob_const("W", [cout, cin, 1, 1], "w.bin"),
        f"{tensor('fp16', [1, cout, 1, seq])} y = conv(dilations = dl, groups = gr, pad = pd, pad_type = pt, "
        f"strides = st, weight = W, x = x){m.name('y')};",
    ]
    text = m.program([("x", [1, cin, 1, seq])], body, ["y"])
    return text, {"@model_path/weights/w.bin": blob_file(w)}, [[1, cin, 1, seq]]


def attention(m, rng, heads=4, hd=16, seq=32, one_input=False):
    """Causal attention on q, k, v [1, heads*hd, 1, seq]: scores, scale, additive mask, softmax, probs @ v.

    Three inputs q, k, v; with one_input, one input x = [q; k; v] on the channel axis, sliced apart
    in the program (the single-input shape of programs known to train)."""
    d = heads * hd
    mask = np.where(np.tril(np.ones((seq, seq), dtype=bool)), 0.0, -65504.0).reshape(1, 1, seq, seq)
    hs, ht = [1, heads, hd, seq], [1, heads, seq, hd]
    body = [
        m.ints("hsh", hs), m.ints("flat", [1, d, 1, seq]), m.ints("pm", [0, 1, 3, 2]),
        m.const("bool", "no", False), m.const("bool", "yes", True), m.const("fp16", "sc", 1.0 / np.sqrt(hd)),
        m.const("int32", "ax", -1), m.blob_const("mask", [1, 1, seq, seq], "mask.bin"),
    ]
    if one_input:
        body.append(m.ints("qkv_size", [1, d, 1, seq]))
        for i, n in enumerate(("q", "k", "v")):
            body += [m.ints(f"{n}_begin", [0, i * d, 0, 0]),
                     f"{tensor('fp16', [1, d, 1, seq])} {n} = slice_by_size(begin = {n}_begin, size = qkv_size, x = x){m.name(n)};"]
    for n in ("q", "k", "v"):
        body += [f"{tensor('fp16', hs)} {n}4 = reshape(shape = hsh, x = {n}){m.name(n + '4')};",
                 f"{tensor('fp16', ht)} {n}h = transpose(perm = pm, x = {n}4){m.name(n + 'h')};"]
    ss = [1, heads, seq, seq]
    body += [
        f"{tensor('fp16', ss)} s = matmul(transpose_x = no, transpose_y = yes, x = qh, y = kh){m.name('s')};",
        f"{tensor('fp16', ss)} s2 = mul(x = s, y = sc){m.name('s2')};",
        f"{tensor('fp16', ss)} s3 = add(x = s2, y = mask){m.name('s3')};",
        f"{tensor('fp16', ss)} p = softmax(axis = ax, x = s3){m.name('p')};",
        f"{tensor('fp16', ht)} o = matmul(transpose_x = no, transpose_y = no, x = p, y = vh){m.name('o')};",
        f"{tensor('fp16', hs)} ot = transpose(perm = pm, x = o){m.name('ot')};",
        f"{tensor('fp16', [1, d, 1, seq])} y = reshape(shape = flat, x = ot){m.name('y')};",
    ]
    weights = {"@model_path/weights/mask.bin": blob_file(mask)}
    if one_input:
        return m.program([("x", [1, 3 * d, 1, seq])], body, ["y"]), weights, [[1, 3 * d, 1, seq]]
    text = m.program([("q", [1, d, 1, seq]), ("k", [1, d, 1, seq]), ("v", [1, d, 1, seq])], body, ["y"])
    return text, weights, [[1, d, 1, seq]] * 3


def attention_one_input(m, rng):
    """attention() with q, k, v stacked on the channel axis of one input."""
    return attention(m, rng, one_input=True)


def packed_matmul(m, rng, cin=64, cout=96, seq=32):
    """y = M^T x with x and M [cin, cout] side by side in one input [1, cin, 1, seq + cout]."""
    body = [
        m.ints("b0", [0, 0, 0, 0]), m.ints("sa", [1, cin, 1, seq]),
        m.ints("b1", [0, 0, 0, seq]), m.ints("sw", [1, cin, 1, cout]),
        m.ints("ra", [1, 1, cin, seq]), m.ints("rw", [1, 1, cin, cout]), m.ints("pm", [0, 1, 3, 2]),
        m.ints("ry", [1, cout, 1, seq]), m.const("bool", "no", False),
        f"{tensor('fp16', [1, cin, 1, seq])} a = slice_by_size(begin = b0, size = sa, x = x){m.name('a')};",
        f"{tensor('fp16', [1, cin, 1, cout])} w = slice_by_size(begin = b1, size = sw, x = x){m.name('w')};",
        f"{tensor('fp16', [1, 1, cin, seq])} a2 = reshape(shape = ra, x = a){m.name('a2')};",
        f"{tensor('fp16', [1, 1, seq, cin])} at = transpose(perm = pm, x = a2){m.name('at')};",
        f"{tensor('fp16', [1, 1, cin, cout])} w2 = reshape(shape = rw, x = w){m.name('w2')};",
        f"{tensor('fp16', [1, 1, seq, cout])} y0 = matmul(transpose_x = no, transpose_y = no, x = at, y = w2){m.name('y0')};",
        f"{tensor('fp16', [1, 1, cout, seq])} y1 = transpose(perm = pm, x = y0){m.name('y1')};",
        f"{tensor('fp16', [1, cout, 1, seq])} y = reshape(shape = ry, x = y1){m.name('y')};",
    ]
    text = m.program([("x", [1, cin, 1, seq + cout])], body, ["y"])
    return text, {}, [[1, cin, 1, seq + cout]]


def rmsnorm(m, rng, dim=64, seq=32):
    """y = x * (mean over channels of x^2 + eps)^-1/2 * gamma, gamma a BLOBFILE [1, dim, 1, 1]."""
    gamma = (1.0 + 0.1 * rng.standard_normal((1, dim, 1, 1))).astype(np.float16)
    body = [
        m.ints("ax", [1]), m.const("bool", "kd", True), m.const("fp16", "inv", 1.0 / dim),
        m.const("fp16", "eps", 1e-5), m.const("fp16", "nh", -0.5), m.blob_const("g", [1, dim, 1, 1], "g.bin"),
        f"{tensor('fp16', [1, dim, 1, seq])} sq = mul(x = x, y = x){m.name('sq')};",
        f"{tensor('fp16', [1, 1, 1, seq])} ss = reduce_sum(axes = ax, keep_dims = kd, x = sq){m.name('ss')};",
        f"{tensor('fp16', [1, 1, 1, seq])} ms = mul(x = ss, y = inv){m.name('ms')};",
        f"{tensor('fp16', [1, 1, 1, seq])} me = add(x = ms, y = eps){m.name('me')};",
        f"{tensor('fp16', [1, 1, 1, seq])} r = pow(x = me, y = nh){m.name('r')};",
        f"{tensor('fp16', [1, dim, 1, seq])} xr = mul(x = x, y = r){m.name('xr')};",
        f"{tensor('fp16', [1, dim, 1, seq])} y = mul(x = xr, y = g){m.name('y')};",
    ]
    text = m.program([("x", [1, dim, 1, seq])], body, ["y"])
    return text, {"@model_path/weights/g.bin": blob_file(gamma)}, [[1, dim, 1, seq]]


def channel_softmax(m, rng, channels=128, seq=32):
    """softmax over the channel axis (the classifier's vocabulary axis)."""
    body = [m.const("int32", "ax", 1),
            f"{tensor('fp16', [1, channels, 1, seq])} y = softmax(axis = ax, x = x){m.name('y')};"]
    return m.program([("x", [1, channels, 1, seq])], body, ["y"]), {}, [[1, channels, 1, seq]]


def two_input_add(m, rng, channels=64, seq=32):
    """y = a + b with two inputs (the multi-input request probe)."""
    body = [f"{tensor('fp16', [1, channels, 1, seq])} y = add(x = a, y = b){m.name('y')};"]
    return m.program([("a", [1, channels, 1, seq]), ("b", [1, channels, 1, seq])], body, ["y"]), {}, \
        [[1, channels, 1, seq]] * 2


def doubled(m, rng, channels=64, seq=32):
    """y = x + x: the smallest program, for tests that need any kernel at all."""
    body = [f"{tensor('fp16', [1, channels, 1, seq])} y = add(x = x, y = x){m.name('y')};"]
    return m.program([("x", [1, channels, 1, seq])], body, ["y"]), {}, [[1, channels, 1, seq]]


# The self-test's programs by name; each has the shape of programs known to train (one input,
# one output; tests/test_ane_rules.py checks them against the ANE rules).
BUILTIN = {
    "linear_conv_blobfile": linear,
    "attention_causal_mask": attention_one_input,
    "matmul_packed_weights": packed_matmul,
    "rmsnorm": rmsnorm,
    "softmax_channels": channel_softmax,
}
