// Run-time choice of the fp16 kernel set, and the bulk entry points. Large arrays are split
// across the thread pool: one core cannot saturate memory bandwidth with conversions.
#include "core/fp16.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "core/threads.h"

namespace anetrain::fp16 {
namespace {

const Kernels* best() {
    if (auto* k = neon_kernels()) return k;
    if (auto* k = avx512_kernels()) return k;
    if (auto* k = f16c_kernels()) return k;
    return scalar_kernels();
}

const Kernels* initial() {
    if (const char* env = std::getenv("ANETRAIN_FP16_PATH")) {
        try { return &kernels(env); } catch (const std::exception&) {}
    }
    return best();
}

std::atomic<const Kernels*>& current() {
    static std::atomic<const Kernels*> k{initial()};
    return k;
}

constexpr size_t kParallelMin = size_t(1) << 20;  // elements; below this one thread wins

template <class S, class D>
void run(void (*fn)(const S*, D*, size_t), const S* s, D* d, size_t n) {
    if (n < kParallelMin) return fn(s, d, n);
    // chunks of 64K elements keep every chunk boundary 64-byte aligned relative to the start
    threads::parallel_for(n, size_t(1) << 16, [&](size_t b, size_t e) { fn(s + b, d + b, e - b); });
}

}  // namespace

std::vector<std::string> available_paths() {
    std::vector<std::string> out{"scalar"};
    if (f16c_kernels()) out.push_back("f16c");
    if (avx512_kernels()) out.push_back("avx512");
    if (neon_kernels()) out.push_back("neon");
    return out;
}

const Kernels& kernels(const std::string& name) {
    const Kernels* k = nullptr;
    if (name == "scalar") k = scalar_kernels();
    else if (name == "f16c") k = f16c_kernels();
    else if (name == "avx512") k = avx512_kernels();
    else if (name == "neon") k = neon_kernels();
    else if (name == "auto") k = best();
    else throw std::invalid_argument("unknown fp16 path '" + name + "' (use scalar, f16c, avx512, neon or auto)");
    if (!k) throw std::invalid_argument("fp16 path '" + name + "' is not available on this CPU");
    return *k;
}

const Kernels& active() { return *current().load(std::memory_order_relaxed); }
void set_path(const std::string& name) { current().store(&kernels(name)); }

void f32_to_f16(const float* s, uint16_t* d, size_t n) { run(active().f32_to_f16, s, d, n); }
void f16_to_f32(const uint16_t* s, float* d, size_t n) { run(active().f16_to_f32, s, d, n); }
void round_f32(const float* s, float* d, size_t n) { run(active().round_f32, s, d, n); }

}  // namespace anetrain::fp16
