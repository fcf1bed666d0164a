// fp16 <-> fp32 conversion, IEEE binary16 with round-to-nearest-even.
// One interface; the instruction-set kernels live in fp16_<isa>.cpp and are chosen once at run
// time (fp16.cpp). Every path is bit-exact with the scalar reference, NaNs stay NaN (quieted).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace anetrain::fp16 {

// Scalar reference conversions (also used for tails).
uint16_t from_float(float f);
float to_float(uint16_t h);

// Bulk conversions through the fastest available path.
void f32_to_f16(const float* src, uint16_t* dst, size_t n);
void f16_to_f32(const uint16_t* src, float* dst, size_t n);
// dst[i] = the fp32 value of the nearest fp16 to src[i] (in place allowed). The ref backend
// stores fp16 tensors this way, so rounding at an op output is one pass.
void round_f32(const float* src, float* dst, size_t n);

// Kernel sets. "scalar" exists everywhere; "f16c"/"avx512" on x86 with CPU support; "neon" on arm64.
struct Kernels {
    const char* name;
    void (*f32_to_f16)(const float*, uint16_t*, size_t);
    void (*f16_to_f32)(const uint16_t*, float*, size_t);
    void (*round_f32)(const float*, float*, size_t);
};
std::vector<std::string> available_paths();
const Kernels& active();
// Switch the process-wide path (tests and benchmarks); throws std::invalid_argument when the
// name is unknown or the CPU lacks it.
void set_path(const std::string& name);
const Kernels& kernels(const std::string& name);

// Internal: per-ISA kernel sets (nullptr when not compiled in or not supported by this CPU).
const Kernels* scalar_kernels();
const Kernels* f16c_kernels();
const Kernels* avx512_kernels();
const Kernels* neon_kernels();

}  // namespace anetrain::fp16
