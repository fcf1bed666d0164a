#include "core/blas.h"

#include <atomic>
#include <cstdint>

#if defined(ANETRAIN_SCIPY_OPENBLAS)
extern "C" {
char* ANETRAIN_OPENBLAS_FN(get_corename)(void);
char* ANETRAIN_OPENBLAS_FN(get_config)(void);
int ANETRAIN_OPENBLAS_FN(get_num_threads)(void);
void ANETRAIN_OPENBLAS_FN(set_num_threads)(int);
}
#endif

namespace anetrain::blas {
namespace {

// Products below this many multiply-adds run on one BLAS thread. OpenBLAS's threads
// synchronise by spinning; on small products that costs more than it saves, and when another
// process holds a core it stalls outright (measured here: a 128-wide model's dW sgemms took 38x
// longer with 2 threads than with 1 on a loaded 2-core machine).
constexpr int64_t kMultiThreadMacs = int64_t(1) << 22;

#if defined(ANETRAIN_SCIPY_OPENBLAS)
std::atomic<int>& max_threads() {
    static std::atomic<int> n{ANETRAIN_OPENBLAS_FN(get_num_threads)()};
    return n;
}
std::atomic<int>& current_threads() {
    static std::atomic<int> n{ANETRAIN_OPENBLAS_FN(get_num_threads)()};
    return n;
}
void use_threads(int n) {
    if (current_threads().exchange(n) != n) ANETRAIN_OPENBLAS_FN(set_num_threads)(n);
}
#endif

}  // namespace

std::string library() {
#if defined(ANETRAIN_ACCELERATE)
    return "accelerate";
#else
    return std::string("scipy-openblas32 (") + ANETRAIN_OPENBLAS_FN(get_config)() + ")";
#endif
}

std::string core_type() {
#if defined(ANETRAIN_ACCELERATE)
    return "n/a";
#else
    return ANETRAIN_OPENBLAS_FN(get_corename)();
#endif
}

int threads() {
#if defined(ANETRAIN_ACCELERATE)
    return 0;  // Accelerate manages its own threads
#else
    return max_threads().load();
#endif
}

void set_threads(int n) {
#if defined(ANETRAIN_SCIPY_OPENBLAS)
    max_threads() = n > 0 ? n : 1;
    use_threads(max_threads());
#else
    (void)n;
#endif
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
#if defined(ANETRAIN_SCIPY_OPENBLAS)
    use_threads(int64_t(M) * N * K < kMultiThreadMacs ? 1 : max_threads().load());
#endif
    BLAS_FN(sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                   lda, B, ldb, beta, C, ldc);
}

}  // namespace anetrain::blas
