// softmax(x, axis): exp(x - max) / sum, accumulated in fp32. A Ranged step whose ranges are
// whole blocks of the axis (rows, for the last axis): split across threads, fusable with the
// element-wise ops around it (fuse.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/vec_math.h"
#include "backend/ref/plan.h"
#include "core/simd.h"

namespace anetrain::backend::ref {

namespace {

// Softmax along the middle axis of a contiguous [outer, n, inner] block.
ANETRAIN_HOT void softmax_block(const float* x, float* y, int64_t n, int64_t inner) {
    if (inner == 1) {
        std::memcpy(y, x, size_t(n) * sizeof(float));
        softmax_row(y, n);
        return;
    }
    for (int64_t j = 0; j < inner; ++j) {
        float mx = -INFINITY;
        for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i * inner + j]);
        float sum = 0.0f;
        for (int64_t i = 0; i < n; ++i) {
            float e = fast_exp(x[i * inner + j] - mx);
            y[i * inner + j] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        for (int64_t i = 0; i < n; ++i) y[i * inner + j] *= inv;
    }
}

void build_softmax(Builder& b) {
    const View x0 = b.tensor_ranged("x");
    b.require_float("x", x0);
    if (x0.rank() == 0) b.fail("x must have rank 1 or more");
    const int64_t axis = normalize_axis(b, b.int_scalar("axis", -1), x0.rank(), "axis");
    View out = b.output(0, x0.dtype, x0.shape);
    View x = b.contiguous(x0);
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < axis; ++i) outer *= x.shape[size_t(i)];
    for (size_t i = size_t(axis) + 1; i < x.rank(); ++i) inner *= x.shape[i];
    const int64_t n = x.shape[size_t(axis)], block = n * inner;
    const bool round = b.rounds(out);
    const Sink* sink = b.claim_sink(0);
    Ranged r;
    r.numel = outer * block;
    r.align = std::max<int64_t>(block, 1);
    r.reads = {ranged_access(x.data, sizeof(float), x.shape, x.strides)};
    r.writes = {ranged_access(out.data, sizeof(float), out.shape, out.strides)};
    r.run = [x, out, n, inner, block, round, sink](int64_t b, int64_t e, const AddressMap& t) {
        const float* xp = t.at(x.f());
        float* own = t.at(out.f());
        float* y = target(sink, own);
        for (int64_t o = b; o < e; o += block) softmax_block(xp + o, y + o, n, inner);
        emit(sink, round, own, size_t(b), size_t(e - b));
    };
    b.add_ranged(std::move(r));
}

}  // namespace

void register_softmax_ops(std::map<std::string, BuildFn>& r) { r["softmax"] = build_softmax; }

}  // namespace anetrain::backend::ref
