// x86 fp16 kernels: F16C (8 lanes) and AVX-512F (16 lanes, non-temporal stores for large
// arrays). The translation unit is built for the baseline ISA; only these functions carry
// target attributes, and fp16.cpp calls them only after cpuid says the CPU has the features.
#include "core/fp16.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>

namespace anetrain::fp16 {
namespace {

constexpr size_t kStreamBytes = size_t(4) << 20;  // NT stores only pay once data leaves cache

bool cpu_has_f16c() {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!(osxsave && avx && f16c)) return false;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6u) == 6u;
}

bool cpu_has_avx512f() {
    if (!cpu_has_f16c()) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(b & (1u << 16))) return false;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6u) == 0xe6u;
}

__attribute__((target("avx,f16c"))) void f16c_f32_to_f16(const float* s, uint16_t* d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) d[i] = from_float(s[i]);
}
__attribute__((target("avx,f16c"))) void f16c_f16_to_f32(const uint16_t* s, float* d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + i))));
    for (; i < n; ++i) d[i] = to_float(s[i]);
}
__attribute__((target("avx,f16c"))) void f16c_round_f32(const float* s, float* d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; ++i) d[i] = to_float(from_float(s[i]));
}

// Peel scalar elements until dst is 64-byte aligned so streaming stores can be used.
template <class T>
size_t head_to_align64(const T* p, size_t n) {
    size_t mis = reinterpret_cast<uintptr_t>(p) & 63u;
    if (mis % sizeof(T)) return n;  // cannot align: caller uses unaligned stores throughout
    size_t k = mis ? (64u - mis) / sizeof(T) : 0;
    return k < n ? k : n;
}

__attribute__((target("avx512f,f16c"))) void avx512_f32_to_f16(const float* s, uint16_t* d, size_t n) {
    size_t i = 0;
    const bool stream = n * 6 >= kStreamBytes && (reinterpret_cast<uintptr_t>(d) & 1u) == 0;
    if (stream) {
        size_t head = head_to_align64(d, n);
        for (; i < head; ++i) d[i] = from_float(s[i]);
        for (; i + 32 <= n; i += 32) {  // 32 halves = one 64-byte line
            __m256i a = _mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT);
            __m256i b = _mm512_cvtps_ph(_mm512_loadu_ps(s + i + 16), _MM_FROUND_TO_NEAREST_INT);
            _mm512_stream_si512((__m512i*)(d + i), _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
        }
        _mm_sfence();
    }
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(d + i), _mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) d[i] = from_float(s[i]);
}
__attribute__((target("avx512f,f16c"))) void avx512_f16_to_f32(const uint16_t* s, float* d, size_t n) {
    size_t i = 0;
    const bool stream = n * 6 >= kStreamBytes && (reinterpret_cast<uintptr_t>(d) & 3u) == 0;
    if (stream) {
        size_t head = head_to_align64(d, n);
        for (; i < head; ++i) d[i] = to_float(s[i]);
        for (; i + 16 <= n; i += 16) _mm512_stream_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(s + i))));
        _mm_sfence();
    }
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(s + i))));
    for (; i < n; ++i) d[i] = to_float(s[i]);
}
__attribute__((target("avx512f,f16c"))) void avx512_round_f32(const float* s, float* d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; ++i) d[i] = to_float(from_float(s[i]));
}

const Kernels kF16C{"f16c", f16c_f32_to_f16, f16c_f16_to_f32, f16c_round_f32};
const Kernels kAVX512{"avx512", avx512_f32_to_f16, avx512_f16_to_f32, avx512_round_f32};

}  // namespace

const Kernels* f16c_kernels() { return cpu_has_f16c() ? &kF16C : nullptr; }
const Kernels* avx512_kernels() { return cpu_has_avx512f() ? &kAVX512 : nullptr; }

}  // namespace anetrain::fp16

#else
namespace anetrain::fp16 {
const Kernels* f16c_kernels() { return nullptr; }
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace anetrain::fp16
#endif
