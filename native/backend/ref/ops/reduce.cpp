// reduce_sum / reduce_mean / reduce_max over `axes` (default: all), keep_dims. The input is
// streamed once in memory order into fp32 accumulators shaped like the output, so reducing the
// channel axis of [1, C, 1, S] is a vector accumulation and reducing the last axis a row sum.
#include <cmath>
#include <limits>

#include "backend/ref/ops/vec_math.h"
#include "backend/ref/plan.h"
#include "core/fp16.h"

namespace anetrain::backend::ref {

namespace {

enum class Red { sum, mean, max };

void build_reduce(Builder& b, Red kind) {
    const View x = b.tensor("x");
    b.require_float("x", x);
    const size_t r = x.rank();
    std::vector<bool> reduced(r, false);
    if (b.has("axes")) {
        for (int64_t a : b.ints("axes")) {
            int64_t ax = normalize_axis(b, a, r, "axis");
            if (reduced[size_t(ax)]) b.fail("axis " + std::to_string(a) + " is listed twice");
            reduced[size_t(ax)] = true;
        }
    } else {
        reduced.assign(r, true);
    }
    const bool keep = b.bool_scalar("keep_dims", false);
    Shape out_shape, acc_strides(r, 0);
    int64_t count = 1, acc = 1;
    for (size_t i = r; i-- > 0;) {
        if (reduced[i]) {
            count *= x.shape[i];
        } else {
            acc_strides[i] = acc;
            acc *= x.shape[i];
        }
    }
    for (size_t i = 0; i < r; ++i) {
        if (!reduced[i]) out_shape.push_back(x.shape[i]);
        else if (keep) out_shape.push_back(1);
    }
    if (kind == Red::max && count == 0) b.fail("reduce_max over an empty axis");
    View out = b.output(0, x.dtype, out_shape);
    Loop L = make_loop(x.shape, {x.strides, acc_strides});
    bool own_rows = L.strides[1].back() == 0;
    for (size_t d = 0; d + 1 < L.shape.size(); ++d) own_rows = own_rows && L.strides[1][d] != 0;
    const int64_t out_n = out.numel();
    const bool round = b.rounds(out);
    b.add_step([=] {
        float* o = out.f();
        const float init = kind == Red::max ? -std::numeric_limits<float>::infinity() : 0.0f;
        for (int64_t i = 0; i < out_n; ++i) o[i] = init;
        const int64_t n = L.inner(), sx = L.strides[0].back(), so = L.strides[1].back();
        const float* xp = x.f();
        // Rows that each own one output (only the inner loop dimension is reduced) run in
        // parallel; otherwise rows share outputs and run in order.
        auto rows = [&](int64_t r0, int64_t r1) {
            for_rows<2>(L, r0, r1, [&](const int64_t* off) {
                const float* a = xp + off[0];
                float* c = o + off[1];
                if (so == 0) {
                    float s = *c;
                    if (kind == Red::max)
                        for (int64_t i = 0; i < n; ++i) s = (a[i * sx] > s || std::isnan(a[i * sx])) ? a[i * sx] : s;
                    else if (sx == 1)
                        s += sum_f32(a, n);  // 8 partial sums: vectorises, and no less accurate
                    else
                        for (int64_t i = 0; i < n; ++i) s += a[i * sx];
                    *c = s;
                } else if (kind == Red::max) {
                    for (int64_t i = 0; i < n; ++i) c[i * so] = (a[i * sx] > c[i * so] || std::isnan(a[i * sx])) ? a[i * sx] : c[i * so];
                } else {
                    for (int64_t i = 0; i < n; ++i) c[i * so] += a[i * sx];
                }
            });
        };
        if (own_rows)
            parallel_rows(L.rows(), n, rows);
        else
            rows(0, L.rows());
        if (kind == Red::mean) {
            const float inv = 1.0f / float(count);
            for (int64_t i = 0; i < out_n; ++i) o[i] *= inv;
        }
        if (round) fp16::round_f32(o, o, size_t(out_n));
    });
}

template <Red K>
void build_red(Builder& b) { build_reduce(b, K); }

}  // namespace

void register_reduce_ops(std::map<std::string, BuildFn>& r) {
    r["reduce_sum"] = build_red<Red::sum>;
    r["reduce_mean"] = build_red<Red::mean>;
    r["reduce_max"] = build_red<Red::max>;
}

}  // namespace anetrain::backend::ref
