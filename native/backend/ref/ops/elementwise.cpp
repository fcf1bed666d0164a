// Element-wise ops: binary with NumPy broadcasting (add, sub, mul, real_div, pow, maximum,
// minimum) and unary activations. Operands are iterated through a coalesced strided loop whose
// inner row has fast paths for same-shape, scalar and row/channel broadcast. Each op is a Ranged
// step (any range of output elements on its own, fp16 rounding included), so big tensors are
// split across threads and chains of these ops can be fused (fuse.cpp).
#include <algorithm>
#include <cmath>

#include "core/vec_math.h"
#include "backend/ref/plan.h"
#include "core/fp16.h"
#include "core/simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace anetrain::backend::ref {

namespace {

// One row of a binary op, with fast paths for same-shape and scalar operands.
template <class T, class F>
ANETRAIN_HOT void binary_row(const T* a, const T* c, T* o, int64_t n, int64_t sx, int64_t sy, F f) {
    if (sx == 1 && sy == 1) {
        for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], c[i]);
    } else if (sx == 0 && sy == 1) {
        const T s = a[0];
        for (int64_t i = 0; i < n; ++i) o[i] = f(s, c[i]);
    } else if (sx == 1 && sy == 0) {
        const T s = c[0];
        for (int64_t i = 0; i < n; ++i) o[i] = f(a[i], s);
    } else {
        for (int64_t i = 0; i < n; ++i) o[i] = f(a[i * sx], c[i * sy]);
    }
}

// Rows of a binary op whose fp16 output is rounded. With F16C each group of 8 results is rounded
// in a register as it is computed; otherwise emit() rounds the output in a second pass, which on
// a fused tile cost about as much as the op itself. F16C rounds exactly as fp16::round_f32, so
// the results are the same either way. (Unary ops keep the pass: GCC leaves an exp inside this
// form of loop scalar.)
#if defined(__x86_64__) && defined(__GNUC__)
#define ANETRAIN_ROUND_IN_ROW 1
bool round_in_row() {
    static const bool ok = fp16::f16c_kernels() != nullptr;
    return ok;
}
// o[k] = the fp16 rounding of g(k) for k in [0, n).
template <class G>
__attribute__((target("avx,f16c"))) inline void rounded_row(float* o, int64_t n, G g) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_setr_ps(g(i), g(i + 1), g(i + 2), g(i + 3), g(i + 4), g(i + 5), g(i + 6), g(i + 7));
        _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)));
    }
    for (; i < n; ++i) o[i] = fp16::to_float(fp16::from_float(g(i)));
}
template <class F>
__attribute__((target("avx,f16c"))) void binary_row_rounded(const float* a, const float* c, float* o, int64_t n, int64_t sx,
                                                            int64_t sy, F f) {
    if (sx == 1 && sy == 1) {
        rounded_row(o, n, [&](int64_t k) { return f(a[k], c[k]); });
    } else if (sx == 0 && sy == 1) {
        const float s = a[0];
        rounded_row(o, n, [&](int64_t k) { return f(s, c[k]); });
    } else if (sx == 1 && sy == 0) {
        const float s = c[0];
        rounded_row(o, n, [&](int64_t k) { return f(a[k], s); });
    } else {
        rounded_row(o, n, [&](int64_t k) { return f(a[k * sx], c[k * sy]); });
    }
}
#endif

template <class T, class F>
void plan_binary(Builder& b, const View& x, const View& y, const View& out, F f) {
    const Shape xs = broadcast_strides(x, out.shape), ys = broadcast_strides(y, out.shape);
    Loop L = make_loop(out.shape, {xs, ys, out.strides});
    const T* xp = x.as<T>();
    const T* yp = y.as<T>();
    T* zp = out.as<T>();
    const bool round = b.rounds(out);
    const Sink* sink = std::is_same_v<T, float> ? b.claim_sink(0) : nullptr;
    Ranged r;
    r.numel = out.numel();
    r.reads = {ranged_access(xp, sizeof(T), out.shape, xs), ranged_access(yp, sizeof(T), out.shape, ys)};
    r.writes = {ranged_access(zp, sizeof(T), out.shape, out.strides)};
    r.run = [L, xp, yp, zp, f, round, sink](int64_t b, int64_t e, const AddressMap& t) {
        const int64_t sx = L.strides[0].back(), sy = L.strides[1].back();
        const T* x = t.at(xp);
        const T* y = t.at(yp);
        T* z = t.at(zp);
        T* zt = z;
        if constexpr (std::is_same_v<T, float>) {
            zt = target(sink, z);
#ifdef ANETRAIN_ROUND_IN_ROW
            if (round && round_in_row()) {
                for_range<3>(L, b, e, [&](const int64_t* off, int64_t n) { binary_row_rounded(x + off[0], y + off[1], zt + off[2], n, sx, sy, f); });
                emit(sink, false, z, size_t(b), size_t(e - b));  // rounded already
                return;
            }
#endif
        }
        for_range<3>(L, b, e, [&](const int64_t* off, int64_t n) { binary_row<T>(x + off[0], y + off[1], zt + off[2], n, sx, sy, f); });
        if constexpr (std::is_same_v<T, float>) emit(sink, round, z, size_t(b), size_t(e - b));
    };
    b.add_ranged(std::move(r));
}

enum class Bin { add, sub, mul, div, pow, max, min };

template <class T>
void plan_binary_op(Builder& b, Bin kind, const View& x, const View& y, const View& out) {
    switch (kind) {
        case Bin::add: plan_binary<T>(b, x, y, out, [](T a, T c) { return T(a + c); }); break;
        case Bin::sub: plan_binary<T>(b, x, y, out, [](T a, T c) { return T(a - c); }); break;
        case Bin::mul: plan_binary<T>(b, x, y, out, [](T a, T c) { return T(a * c); }); break;
        case Bin::max: plan_binary<T>(b, x, y, out, [](T a, T c) { return std::isnan(float(a)) || a > c ? a : c; }); break;
        case Bin::min: plan_binary<T>(b, x, y, out, [](T a, T c) { return std::isnan(float(a)) || a < c ? a : c; }); break;
        case Bin::div:
            if constexpr (std::is_same_v<T, float>) plan_binary<T>(b, x, y, out, [](T a, T c) { return a / c; });
            break;
        case Bin::pow:
            if constexpr (std::is_same_v<T, float>) plan_binary<T>(b, x, y, out, [](T a, T c) { return std::pow(a, c); });
            break;
    }
}

void build_binary(Builder& b, Bin kind) {
    const View& x = b.tensor_ranged("x");
    const View& y = b.tensor_ranged("y");
    b.require_dtype("x", x, {DType::fp16, DType::fp32, DType::int32});
    b.require_dtype("y", y, {DType::fp16, DType::fp32, DType::int32});
    DType dt = x.dtype;
    if (x.dtype != y.dtype) {
        if (!mil::is_float(x.dtype) || !mil::is_float(y.dtype))
            b.fail(std::string("x is ") + mil::dtype_name(x.dtype) + " but y is " + mil::dtype_name(y.dtype) + "; cast one of them");
        dt = DType::fp32;
    }
    if (dt == DType::int32 && (kind == Bin::div || kind == Bin::pow)) b.fail("int32 operands are not supported; cast to fp32");
    Shape shape;
    if (!broadcast_shapes(x.shape, y.shape, &shape))
        b.fail("shapes " + shape_str(x.shape) + " and " + shape_str(y.shape) + " do not broadcast");
    View out = b.output(0, dt, shape);
    if (dt == DType::int32)
        plan_binary_op<int32_t>(b, kind, x, y, out);
    else
        plan_binary_op<float>(b, kind, x, y, out);
}

template <Bin K>
void build_bin(Builder& b) { build_binary(b, K); }

// ---------------------------------------------------------------- unary

template <class F>
ANETRAIN_HOT void unary_row(const float* a, float* o, int64_t n, int64_t sx, F f) {
    if (sx == 1)
        for (int64_t i = 0; i < n; ++i) o[i] = f(a[i]);
    else
        for (int64_t i = 0; i < n; ++i) o[i] = f(a[i * sx]);
}

template <class F>
void plan_unary(Builder& b, const View& x, const View& out, F f) {
    Loop L = make_loop(out.shape, {x.strides, out.strides});
    const float* xp = x.f();
    float* zp = out.f();
    const bool round = b.rounds(out);
    const Sink* sink = b.claim_sink(0);
    Ranged r;
    r.numel = out.numel();
    r.reads = {ranged_access(xp, sizeof(float), out.shape, x.strides)};
    r.writes = {ranged_access(zp, sizeof(float), out.shape, out.strides)};
    r.run = [L, xp, zp, f, round, sink](int64_t b, int64_t e, const AddressMap& t) {
        const int64_t sx = L.strides[0].back();
        const float* x = t.at(xp);
        float* z = t.at(zp);
        float* zt = target(sink, z);
        for_range<2>(L, b, e, [&](const int64_t* off, int64_t n) { unary_row(x + off[0], zt + off[1], n, sx, f); });
        emit(sink, round, z, size_t(b), size_t(e - b));
    };
    b.add_ranged(std::move(r));
}

const View& unary_input(Builder& b, View* out) {
    const View& x = b.tensor_ranged("x");
    b.require_float("x", x);
    *out = b.output(0, x.dtype, x.shape);
    return x;
}

void build_exp(Builder& b) {
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [](float v) { return fast_exp(v); });
}
void build_sqrt(Builder& b) {
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [](float v) { return std::sqrt(v); });
}
void build_rsqrt(Builder& b) {
    float eps = float(b.number_scalar("epsilon", 1e-12));
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [eps](float v) { return 1.0f / std::sqrt(v + eps); });
}
void build_sigmoid(Builder& b) {
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [](float v) { return sigmoid(v); });
}
void build_silu(Builder& b) {
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [](float v) { return v / (1.0f + fast_exp(-v)); });
}
void build_tanh(Builder& b) {
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [](float v) { return std::tanh(v); });
}
void build_relu(Builder& b) {
    View out;
    const View& x = unary_input(b, &out);
    plan_unary(b, x, out, [](float v) { return v > 0.0f ? v : (v == v ? 0.0f : v); });
}

}  // namespace

void register_elementwise_ops(std::map<std::string, BuildFn>& r) {
    r["add"] = build_bin<Bin::add>;
    r["sub"] = build_bin<Bin::sub>;
    r["mul"] = build_bin<Bin::mul>;
    r["real_div"] = build_bin<Bin::div>;
    r["pow"] = build_bin<Bin::pow>;
    r["maximum"] = build_bin<Bin::max>;
    r["minimum"] = build_bin<Bin::min>;
    r["exp"] = build_exp;
    r["sqrt"] = build_sqrt;
    r["rsqrt"] = build_rsqrt;
    r["sigmoid"] = build_sigmoid;
    r["silu"] = build_silu;
    r["tanh"] = build_tanh;
    r["relu"] = build_relu;
}

}  // namespace anetrain::backend::ref
