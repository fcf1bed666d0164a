// arm64 fp16 kernels: NEON vcvt_f16_f32 / vcvt_f32_f16, 8 lanes per iteration.
// Every arm64 core (Apple M-series included) has these, so no run-time check is needed.
#include "core/fp16.h"

#if defined(__aarch64__)
#include <arm_neon.h>

namespace anetrain::fp16 {
namespace {

void neon_f32_to_f16(const float* s, uint16_t* d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x4_t lo = vcvt_f16_f32(vld1q_f32(s + i));
        float16x4_t hi = vcvt_f16_f32(vld1q_f32(s + i + 4));
        vst1q_u16(d + i, vreinterpretq_u16_f16(vcombine_f16(lo, hi)));
    }
    for (; i < n; ++i) d[i] = from_float(s[i]);
}
void neon_f16_to_f32(const uint16_t* s, float* d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(s + i));
        vst1q_f32(d + i, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(d + i + 4, vcvt_high_f32_f16(h));
    }
    for (; i < n; ++i) d[i] = to_float(s[i]);
}
void neon_round_f32(const float* s, float* d, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(d + i, vcvt_f32_f16(vcvt_f16_f32(vld1q_f32(s + i))));
    for (; i < n; ++i) d[i] = to_float(from_float(s[i]));
}
const Kernels kNEON{"neon", neon_f32_to_f16, neon_f16_to_f32, neon_round_f32};

}  // namespace
const Kernels* neon_kernels() { return &kNEON; }
}  // namespace anetrain::fp16

#else
namespace anetrain::fp16 {
const Kernels* neon_kernels() { return nullptr; }
}  // namespace anetrain::fp16
#endif
