#!/usr/bin/env python
"""Ref-backend interpreter overhead: each kernel's evaluation time against a direct BLAS sgemm
of the same FLOPs in the same process (same thread count).

  (a) linear as a 1x1 conv: x [1, 768, 1, 256] fp16, W [2048, 768, 1, 1] fp16 BLOBFILE
  (b) attention-style matmul: [1, 12, 256, 64] x [1, 12, 64, 256], as an fp16 program and as an
      fp32 program (no fp16 conversions: what remains is the interpreter's own overhead)

Columns: 'api' = kernel(x) through anetrain.kernels (fp16 arrays in, new fp16 array out);
'eval' = the pure evaluation into preallocated outputs; 'blas' = the same sgemm calls on fp32
arrays via anetrain._native (for the batched matmul, the faster of one call per head and all
heads spread over the threads). Target: eval/blas <= 1.10.
"""
import argparse
import os
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import anetrain  # noqa: E402
import anetrain.kernels as K  # noqa: E402
from anetrain import _native  # noqa: E402
from anetrain.bench import best_seconds  # noqa: E402


def blob_file(a):
    data = np.ascontiguousarray(a).tobytes()
    header = struct.pack("<II", 1, 2) + bytes(56)
    meta = struct.pack("<IIQQ", 0xDEADBEEF, 1, len(data), 128) + bytes(40)
    return header + meta + data


def timed(fns, reps, rounds=7, warmup=3):
    """Per callable (median, min) over `rounds` of the mean time of `reps` back-to-back calls.
    Callables take turns round by round, so machine load hits them alike, while each one's
    calls run back to back (no cache or thread-state interference between them)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    means = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            means[i].append((time.perf_counter() - t) / reps)
    return [(float(np.median(m)), float(np.min(m))) for m in means]


def linear_case(rng, C=768, O=2048, S=256):
    w = (rng.standard_normal((O, C, 1, 1)) * 0.03).astype(np.float16)
    text = f"""program(1.3)
{{
    func main<ios18>(tensor<fp16, [1, {C}, 1, {S}]> x) {{
        tensor<fp16, [{O}, {C}, 1, 1]> W = const()[name = string("W"), val = tensor<fp16, [{O}, {C}, 1, 1]>(BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64(64)))];
        string pt = const()[name = string("pt"), val = string("valid")];
        tensor<int32, [2]> st = const()[name = string("st"), val = tensor<int32, [2]>([1, 1])];
        tensor<int32, [4]> pd = const()[name = string("pd"), val = tensor<int32, [4]>([0, 0, 0, 0])];
        int32 gr = const()[name = string("gr"), val = int32(1)];
        tensor<fp16, [1, {O}, 1, {S}]> y = conv(x = x, weight = W, strides = st, pad_type = pt, pad = pd, dilations = st, groups = gr)[name = string("y")];
    }} -> (y);
}}
"""
    k = K.compile(text, weights={"@model_path/weights/w.bin": blob_file(w)}, backend="ref", name="linear")
    x = rng.standard_normal((1, C, 1, S)).astype(np.float16)
    w32 = w.reshape(O, C).astype(np.float32)
    x32 = x.reshape(C, S).astype(np.float32)

    def blas():
        _native.sgemm(w32, x32)

    flops = 2.0 * O * C * S
    return "conv1x1 768->2048 S=256", k, [x], blas, flops, lambda out: np.abs(out.reshape(O, S).astype(np.float32) - w32 @ x32).max()


def matmul_case(rng, H=12, S=256, D=64, dtype="fp16"):
    text = f"""program(1.3)
{{
    func main<ios18>(tensor<{dtype}, [1, {H}, {S}, {D}]> q, tensor<{dtype}, [1, {H}, {D}, {S}]> k) {{
        bool f = const()[name = string("f"), val = bool(false)];
        tensor<{dtype}, [1, {H}, {S}, {S}]> y = matmul(x = q, y = k, transpose_x = f, transpose_y = f)[name = string("y")];
    }} -> (y);
}}
"""
    k = K.compile(text, backend="ref", name="matmul")
    npd = np.float16 if dtype == "fp16" else np.float32
    q = rng.standard_normal((1, H, S, D)).astype(npd)
    kk = rng.standard_normal((1, H, D, S)).astype(npd)
    q32 = [np.ascontiguousarray(q[0, h], np.float32) for h in range(H)]
    k32 = [np.ascontiguousarray(kk[0, h], np.float32) for h in range(H)]

    q_b, k_b = np.stack(q32), np.stack(k32)

    def blas_per_head():
        for h in range(H):
            _native.sgemm(q32[h], k32[h])

    def blas_batched():
        _native.sgemm_batch(q_b, k_b)

    # the faster of two direct-BLAS strategies for the same products is the reference
    blas = min((blas_per_head, blas_batched), key=lambda f: best_seconds(f, 5))

    flops = 2.0 * H * S * S * D
    ref = np.stack([q32[h] @ k32[h] for h in range(H)])[None]
    return f"matmul [1,12,256,64]x[1,12,64,256] {dtype}", k, [q, kk], blas, flops, lambda out: np.abs(out.astype(np.float32) - ref).max()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20, help="back-to-back calls per timing round")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds (median and min reported)")
    args = ap.parse_args()
    info = anetrain.info()
    print(f"BLAS: {info['blas']}  core: {info['blas_core']}  blas_threads: {info['blas_threads']}  "
          f"anetrain threads: {info['threads']}  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  "
          f"fp16 path: {info['simd']}")
    rng = np.random.default_rng(0)
    rows = []
    trainer = []
    for name, kernel, inputs, blas, flops, check in (linear_case(rng), matmul_case(rng), matmul_case(rng, dtype="fp32")):
        outs = [np.empty(o.shape, inputs[0].dtype) for o in kernel.outputs]
        outs32 = [np.empty(o.shape, np.float32) for o in kernel.outputs]
        inputs32 = [a.astype(np.float32) for a in inputs]
        native = kernel._native
        (t_api, m_api), (t_eval, m_eval), (t_blas, m_blas), (t_e32, m_e32) = timed(
            [lambda: kernel(*inputs), lambda: native.eval(inputs, outs), blas, lambda: native.eval(inputs32, outs32)],
            args.reps, args.rounds)
        trainer.append((name, t_e32 / t_blas, m_e32 / m_blas))
        err = check(outs[0])
        rows.append((name, t_api, t_eval, t_blas, flops, err, m_api, m_eval, m_blas))
    print()
    print(f"{args.rounds} rounds of {args.reps} back-to-back calls each; median and min over rounds "
          "(min: least disturbed by other load on the machine)")
    header = (f"{'kernel':41s} {'api ms':>8s} {'eval ms':>8s} {'blas ms':>8s} {'eval/blas':>9s} {'api/blas':>9s} "
              f"{'eval GF/s':>9s} {'blas GF/s':>9s}")
    for label, sel in (("median", (1, 2, 3)), ("min", (6, 7, 8))):
        print(f"\n[{label}]")
        print(header)
        for r in rows:
            name, flops = r[0], r[4]
            t_api, t_eval, t_blas = (r[i] for i in sel)
            print(f"{name:41s} {t_api * 1e3:8.3f} {t_eval * 1e3:8.3f} {t_blas * 1e3:8.3f} {t_eval / t_blas:9.3f} "
                  f"{t_api / t_blas:9.3f} {flops / t_eval / 1e9:9.1f} {flops / t_blas / 1e9:9.1f}")
    print()
    for r in rows:
        print(f"{r[0]}: max |ref - fp32 numpy| = {r[5]:.4f}")
    for name, med, mn in trainer:
        print(f"{name}: eval with float32 I/O buffers (the trainer's path) / blas: median {med:.3f}, min {mn:.3f}")
    worst = max(r[2] / r[3] for r in rows)
    worst_min = max(r[7] / r[8] for r in rows)
    print(f"\nworst eval/blas ratio: median {worst:.3f}, min {worst_min:.3f} "
          f"(target <= 1.10: {'met' if min(worst, worst_min) <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
