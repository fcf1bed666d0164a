// Loop-friendly float math, the one definition for the ref backend's ops, the trainer's CPU ops
// and the decoder: an exp (and sigmoid) the compiler can vectorise, and sum/max reductions with
// independent partial accumulators (fp32 throughout).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace anetrain {

// e^x within ~2 ulp of fp32 (Cephes-style range reduction and degree-6 polynomial), written
// branch-free so loops over it vectorise. x > 88 gives +inf, x < -87 gives 0, NaN stays NaN.
inline float fast_exp(float x) {
    const float lo = x < -87.0f ? -87.0f : x;
    const float hi = lo > 88.0f ? 88.0f : lo;
    const float xc = x == x ? hi : 0.0f;  // NaN is restored at the end; keeps n in [-126, 127]
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
    const float n = (xc * 1.44269504088896341f + magic) - magic;
    const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    const int32_t bits = int32_t(uint32_t(int32_t(n) + 127) << 23);
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    float out = y * scale;
    out = x < -87.0f ? 0.0f : out;
    out = x > 88.0f ? std::numeric_limits<float>::infinity() : out;
    return x != x ? x : out;
}

// 1 / (1 + e^-x) with fast_exp: the sigmoid of the ref backend's op and of the decoder's SwiGLU.
inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// Eight float lanes (a GCC/Clang vector extension). sum_f32 and max_f32 keep eight partial
// results, lane k taking elements k, k + 8, ...; written as scalar arrays, GCC left the eight
// in scalar registers (much slower), so they are spelled as one vector. Same arithmetic.
typedef float f32x8 __attribute__((vector_size(32)));

inline float sum_f32(const float* p, int64_t n) {
    f32x8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x8 v;
        std::memcpy(&v, p + i, sizeof v);
        acc += v;
    }
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; ++i) s += p[i];
    return s;
}

// Largest element, ignoring NaNs (-inf when every element is NaN or n is 0).
inline float max_f32(const float* p, int64_t n) {
    const float lo = -std::numeric_limits<float>::infinity();
    f32x8 acc = {lo, lo, lo, lo, lo, lo, lo, lo};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x8 v;
        std::memcpy(&v, p + i, sizeof v);
        acc = v > acc ? v : acc;
    }
    float m = lo;
    for (int k = 0; k < 8; ++k) m = acc[k] > m ? acc[k] : m;
    for (; i < n; ++i) m = p[i] > m ? p[i] : m;
    return m;
}

// Softmax of one contiguous row in place: exp(x - max) / sum. A NaN anywhere in the row makes
// the sum NaN, so the whole row comes out NaN, as NumPy's does.
inline void softmax_row(float* row, int64_t n) {
    const float mx = max_f32(row, n);
    for (int64_t i = 0; i < n; ++i) row[i] = fast_exp(row[i] - mx);
    const float inv = 1.0f / sum_f32(row, n);
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}

}  // namespace anetrain
