// The reference CPU backend: executes MIL programs with the ANE's semantics (fp16 tensors are
// rounded to fp16 at every op output). It is also the fast CPU path: BLAS for conv and matmul,
// views for reshape/transpose/slices, buffers planned at compile time.
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
};

std::shared_ptr<Backend> make_ref_backend(const RefOptions& options);

}  // namespace anetrain::backend
