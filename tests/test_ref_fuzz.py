"""Fuzz: random mutations, truncations and splices of valid programs (and their blob files)
give a kernel, a MilError or a BackendError, never a crash or a hang."""
import numpy as np
import pytest

import anetrain
import anetrain.kernels as K

from _milkit import blob_file, const, program, ttype

NP = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


def seed_programs():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 4, 1, 1)).astype(np.float16)
    q = rng.integers(-5, 5, (6,)).astype(np.int8)
    blob, offs = blob_file(w, q)
    weights = {"@model_path/weights/w.bin": blob}
    a = program([("x", "fp16", (1, 4, 1, 8))], [
        f'{ttype("fp16", (6, 4, 1, 1))} W = const()[name = string("W"), val = {ttype("fp16", (6, 4, 1, 1))}(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({offs[0]})))];',
        f'{ttype("int8", (6,))} Q = const()[name = string("Q"), val = {ttype("int8", (6,))}(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({offs[1]})))];',
        'string pt = const()[name = string("pt"), val = string("valid")];',
        f'{ttype("fp16", (1, 6, 1, 8))} y = conv(x = x, weight = W, pad_type = pt)[name = string("y")];',
        const("ax", np.array([1], np.int32)), const("kd", np.bool_(True)),
        f'{ttype("fp16", (1, 1, 1, 8))} s = reduce_sum(x = y, axes = ax, keep_dims = kd)[name = string("s")];',
        f'{ttype("fp16", (1, 6, 1, 8))} z = mul(x = y, y = s)[name = string("z")];',
        f'{ttype("fp16", (1, 6, 1, 8))} p = softmax(x = z, axis = int32(-1))[name = string("p")];',
    ], ["p", "s"])
    b = program([("x", "fp16", (1, 8, 1, 12))], [
        const("b0", np.array([0, 0, 0, 0], np.int32)), const("s0", np.array([1, 8, 1, 4], np.int32)),
        const("b1", np.array([0, 0, 0, 4], np.int32)), const("s1", np.array([1, 8, 1, 8], np.int32)),
        f'{ttype("fp16", (1, 8, 1, 4))} act = slice_by_size(x = x, begin = b0, size = s0)[name = string("act")];',
        f'{ttype("fp16", (1, 8, 1, 8))} wt = slice_by_size(x = x, begin = b1, size = s1)[name = string("wt")];',
        const("r0", np.array([1, 1, 8, 4], np.int32)), const("pm", np.array([0, 1, 3, 2], np.int32)),
        f'{ttype("fp16", (1, 1, 8, 4))} a2 = reshape(x = act, shape = r0)[name = string("a2")];',
        f'{ttype("fp16", (1, 1, 4, 8))} a3 = transpose(x = a2, perm = pm)[name = string("a3")];',
        const("r1", np.array([1, 1, 8, 8], np.int32)),
        f'{ttype("fp16", (1, 1, 8, 8))} w2 = reshape(x = wt, shape = r1)[name = string("w2")];',
        f'{ttype("fp16", (1, 1, 4, 8))} m = matmul(x = a3, y = w2, transpose_x = bool(false), transpose_y = bool(false))[name = string("m")];',
        f'{ttype("fp16", (1, 1, 4, 4))} u, {ttype("fp16", (1, 1, 4, 4))} v = split(x = m, axis = int32(-1), num_splits = int32(2))[name = string("sp")];',
        f'{ttype("fp16", (1, 1, 4, 8))} c = concat(values = (v, u), axis = int32(-1), interleave = bool(true))[name = string("c")];',
        'string dt = const()[name = string("dt"), val = string("fp32")];',
        f'{ttype("fp32", (1, 1, 4, 8))} o = cast(x = c, dtype = dt)[name = string("o")];',
    ], ["o"])
    c = program([("q", "fp16", (1, 2, 4, 8)), ("m", "bool", (4, 4))], [
        f'{ttype("fp16", (1, 2, 4, 8))} o = scaled_dot_product_attention(query = q, key = q, value = q, attn_mask = m)[name = string("o")];',
        const("b", np.array([0, 1, 3, 0], np.int32)), const("e", np.array([1, 2, 0, 8], np.int32)),
        const("st", np.array([1, 1, -1, 2], np.int32)), const("sq", np.array([True, False, False, False])),
        f'{ttype("fp16", (1, 3, 4))} v = slice_by_index(x = o, begin = b, end = e, stride = st, squeeze_mask = sq)[name = string("v")];',
        'string od = const()[name = string("od"), val = string("int8")];',
        f'{ttype("int8", (1, 3, 4))} qz = quantize(input = v, scale = fp16(0.05), output_dtype = od)[name = string("qz")];',
        f'{ttype("fp16", (1, 3, 4))} dq = dequantize(input = qz, scale = fp16(0.05))[name = string("dq")];',
        f'{ttype("fp16", (1, 1, 4))} mx = reduce_max(x = dq, axes = tensor<int32, [1]>([1]), keep_dims = bool(true))[name = string("mx")];',
        f'{ttype("fp16", (1, 3, 4))} d = real_div(x = dq, y = mx)[name = string("d")];',
        f'{ttype("fp16", (1, 3, 4))} r = rsqrt(x = d, epsilon = fp16(0.5))[name = string("r")];',
        'string i32 = const()[name = string("i32"), val = string("int32")];',
        f'{ttype("int32", (1, 3, 4))} ci = cast(x = r, dtype = i32)[name = string("ci")];',
    ], ["o", "ci", "r"])
    return [(a, weights), (b, {}), (c, {})]


def mutate(rng, text, other):
    data = bytearray(text.encode())
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 7))
        if not data:
            break
        i = int(rng.integers(0, len(data)))
        if kind == 0:
            data[i] = int(rng.integers(0, 256))
        elif kind == 1:
            data.insert(i, int(rng.choice(list(b"0123456789-,()[]{}<>=;\"x.e_ "))))
        elif kind == 2:
            del data[i:i + int(rng.integers(1, 20))]
        elif kind == 3:
            data = data[:i]
        elif kind == 4:
            o = other.encode()
            j = int(rng.integers(0, len(o)))
            data = data[:i] + o[j:j + int(rng.integers(1, 200))] + data[i:]
        elif kind == 5:
            j = int(rng.integers(0, len(data)))
            data[i:i] = data[j:j + int(rng.integers(1, 60))]
        else:
            digits = [k for k, c in enumerate(data) if 48 <= c <= 57]
            if digits:
                data[int(rng.choice(digits))] = int(rng.integers(48, 58))
    return data.decode("utf-8", errors="replace")


def mutate_blob(rng, blob):
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, len(b)))
        if rng.random() < 0.7:
            b[i] = int(rng.integers(0, 256))
        else:
            b = b[:i]
            break
    return bytes(b)


def try_program(text, weights, rng):
    backend = K.new_backend("ref")
    try:
        k = K.compile(text, weights=weights, backend=backend)
    except (anetrain.MilError, anetrain.BackendError):
        return "rejected"
    total = sum(int(np.prod(i.shape)) for i in k.inputs + k.outputs)
    if total > 1_000_000:
        return "compiled"
    arrays = [(rng.standard_normal(i.shape) * 2).astype(NP[i.dtype]) for i in k.inputs]
    try:
        k(*arrays)
    except anetrain.BackendError:
        return "eval-error"
    return "ran"


def test_mutated_programs_never_crash():
    rng = np.random.default_rng(2026)
    seeds = seed_programs()
    outcomes = {}
    for n in range(4500):
        text, weights = seeds[n % len(seeds)]
        other = seeds[(n + 1) % len(seeds)][0]
        mutated = mutate(rng, text, other)
        w = {k: mutate_blob(rng, v) for k, v in weights.items()} if n % 7 == 0 else weights
        r = try_program(mutated, w, rng)
        outcomes[r] = outcomes.get(r, 0) + 1
    assert outcomes.get("rejected", 0) > 1000     # mutations are mostly caught...
    assert outcomes.get("ran", 0) > 20            # ...and harmless ones still run


def test_unmutated_seeds_run():
    rng = np.random.default_rng(0)
    for text, weights in seed_programs():
        assert try_program(text, weights, rng) == "ran"


def test_random_bytes_and_truncations_of_the_parser():
    rng = np.random.default_rng(99)
    text = seed_programs()[0][0]
    for n in range(1500):
        if n % 2:
            s = bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)).decode("latin-1")
        else:
            s = text[: int(rng.integers(0, len(text)))]
        # a strict prefix of the program or random bytes is never a valid program: each must be
        # refused with a MilError (not accepted, not a crash) that names a line
        with pytest.raises(anetrain.MilError) as e:
            anetrain._native.mil_parse_summary(s)
        assert e.value.line >= 0 and str(e.value).startswith("MIL")
