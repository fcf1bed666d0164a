// The reference CPU backend: executes MIL programs with the ANE's semantics (fp16 tensors are
// rounded to fp16 at every op output). It is also the fast CPU path: BLAS for conv and matmul,
// views for reshape/transpose/slices, buffers planned at compile time, program inputs read in
// the caller's buffer wherever the ops reading them allow it.
//
// Ops (coremltools semantics): const, conv, matmul, scaled_dot_product_attention, add, sub, mul,
// real_div, pow, maximum, minimum, exp, sqrt, rsqrt, sigmoid, silu, tanh, relu, softmax,
// reduce_sum/mean/max, reshape, transpose, slice_by_size, slice_by_index, concat, split, cast,
// quantize, dequantize, constexpr_affine_dequantize. Choices where the spec leaves room:
//  - quantize rounds half to even (NumPy's round), then adds zero_point and clips;
//  - cast from float to an integer type truncates toward zero and saturates (NaN -> 0);
//  - conv pad_type "same" puts floor(total/2) before and the rest after, "same_lower" the reverse;
//  - exp/sigmoid/silu/softmax use a polynomial exp within ~2 fp32 ulp (x > 88 -> inf, x < -87 -> 0);
//  - reductions and softmax accumulate in fp32; an fp16 op output is rounded once (RNE).
// Limits: 2^28 elements per tensor, 4 GiB of buffers per kernel (a MilError beyond that).
#pragma once
#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace anetrain::backend {

struct RefOptions {
    int64_t compile_budget = -1;  // -1: unlimited
    // false = the "fp32" precision mode: nothing is rounded to fp16 (fp16 values are kept as fp32
    // end to end, including fp16 inputs passed as fp32); used to tell logic errors from precision.
    bool fp16_rounding = true;
    // Run chains of element-wise ops, softmax and row reductions tile by tile (results are the
    // same bitwise; false runs every op over its whole tensor). ANETRAIN_REF_FUSE=0 also turns it
    // off, read at each compile.
    bool fuse = true;
};

std::shared_ptr<Backend> make_ref_backend(const RefOptions& options);

}  // namespace anetrain::backend
