// reduce_sum / reduce_mean / reduce_max over `axes` (default: all), keep_dims. The input is
// streamed once in memory order into fp32 accumulators shaped like the output, so reducing the
// channel axis of [1, C, 1, S] is a vector accumulation and reducing the last axis a row sum.
#include <cmath>
#include <limits>

#include "core/vec_math.h"
#include "backend/ref/plan.h"
#include "core/fp16.h"

namespace anetrain::backend::ref {

namespace {

enum class Red { sum, mean, max };

// s combined with the n elements a[0], a[sx], ... (a row of the loop).
float reduce_row(Red kind, const float* a, int64_t n, int64_t sx, float s) {
    if (kind == Red::max) {
        for (int64_t i = 0; i < n; ++i) s = (a[i * sx] > s || std::isnan(a[i * sx])) ? a[i * sx] : s;
        return s;
    }
    if (sx == 1) return s + sum_f32(a, n);  // 8 partial sums: vectorises, and no less accurate
    for (int64_t i = 0; i < n; ++i) s += a[i * sx];
    return s;
}

void build_reduce(Builder& b, Red kind) {
    const View x = b.tensor_ranged("x");
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
    const int64_t out_n = out.numel();
    const bool round = b.rounds(out);
    const float init = kind == Red::max ? -std::numeric_limits<float>::infinity() : 0.0f;
    const float inv = 1.0f / float(count);
    bool own_rows = L.strides[1].back() == 0;
    for (size_t d = 0; d + 1 < L.shape.size(); ++d) own_rows = own_rows && L.strides[1][d] != 0;
    if (own_rows) {
        // Only the inner loop dimension is reduced: row j of the loop (elements [j n, (j + 1) n)
        // of x in index order) makes output j on its own, so this is a Ranged step over x's
        // elements, in whole rows, that writes one output element per row.
        const int64_t n = L.inner();
        Ranged rg;
        rg.numel = x.numel();
        rg.align = n;
        rg.reads = {ranged_access(x.data, sizeof(float), x.shape, x.strides)};
        Ranged::Access w;
        w.base = w.lo = static_cast<const char*>(out.data);
        w.hi = w.base + out_n * int64_t(sizeof(float));
        w.per = n;
        rg.writes = {w};
        rg.run = [=](int64_t b, int64_t e, const AddressMap& t) {
            const int64_t sx = L.strides[0].back(), r0 = b / n, r1 = e / n;
            const float* xp = t.at(x.f());
            float* o = t.at(out.f());
            for_rows<2>(L, r0, r1, [&](const int64_t* off) {
                float s = reduce_row(kind, xp + off[0], n, sx, init);
                if (kind == Red::mean) s *= inv;
                o[off[1]] = s;
            });
            if (round) fp16::round_f32(o + r0, o + r0, size_t(r1 - r0));
        };
        b.add_ranged(std::move(rg));
        return;
    }
    // Otherwise rows share outputs (several dimensions reduced, or an outer one): accumulate in
    // memory order into the whole output, in one pass, serially.
    b.reads_buffer(x);
    b.add_step([=] {
        float* o = out.f();
        for (int64_t i = 0; i < out_n; ++i) o[i] = init;
        const int64_t n = L.inner(), sx = L.strides[0].back(), so = L.strides[1].back();
        const float* xp = x.f();
        for_rows<2>(L, 0, L.rows(), [&](const int64_t* off) {
            const float* a = xp + off[0];
            float* c = o + off[1];
            if (so == 0) {
                *c = reduce_row(kind, a, n, sx, *c);
            } else if (kind == Red::max) {
                for (int64_t i = 0; i < n; ++i) c[i * so] = (a[i * sx] > c[i * so] || std::isnan(a[i * sx])) ? a[i * sx] : c[i * so];
            } else {
                for (int64_t i = 0; i < n; ++i) c[i * so] += a[i * sx];
            }
        });
        if (kind == Red::mean)
            for (int64_t i = 0; i < out_n; ++i) o[i] *= inv;
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
