// Scalar IEEE binary16 conversion by bit manipulation: the reference every SIMD path must match.
#include "core/fp16.h"

#include <cstring>

namespace anetrain::fp16 {

uint16_t from_float(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) {  // inf or NaN; NaN keeps its top payload bits and is quieted
        if (absx == 0x7f800000u) return uint16_t(sign | 0x7c00u);
        return uint16_t(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
    }
    if (absx >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520 -> inf
    if (absx >= 0x38800000u) {                                 // normal half
        uint32_t mant_odd = (absx >> 13) & 1u;
        uint32_t rounded = absx + 0xfffu + mant_odd;  // round to nearest even at bit 13
        return uint16_t(sign | ((rounded - 0x38000000u) >> 13));
    }
    if (absx < 0x33000000u) return uint16_t(sign);  // < 2^-25: rounds to zero (2^-25 ties to even 0)
    // subnormal half: value = m * 2^-24, m in [0, 1023], from exponent e in [103, 112]
    const uint32_t e = absx >> 23;
    const uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // e=112 -> 14 ... e=102 -> 24
    const uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return uint16_t(sign | r);
}

float to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        if (mant == 0) {
            x = sign;
        } else {  // subnormal: normalise
            uint32_t e = 113, m = mant;
            while (!(m & 0x400u)) { m <<= 1; --e; }
            x = sign | (e << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0u);  // quiet NaNs like F16C
    } else {
        x = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

namespace {
void s_f32_to_f16(const float* s, uint16_t* d, size_t n) { for (size_t i = 0; i < n; ++i) d[i] = from_float(s[i]); }
void s_f16_to_f32(const uint16_t* s, float* d, size_t n) { for (size_t i = 0; i < n; ++i) d[i] = to_float(s[i]); }
void s_round_f32(const float* s, float* d, size_t n) { for (size_t i = 0; i < n; ++i) d[i] = to_float(from_float(s[i])); }
const Kernels kScalar{"scalar", s_f32_to_f16, s_f16_to_f32, s_round_f32};
}  // namespace

const Kernels* scalar_kernels() { return &kScalar; }

}  // namespace anetrain::fp16
