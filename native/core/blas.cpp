// The BLAS shim. One thread pool does all of anetrain's parallel CPU work: OpenBLAS itself runs
// single-threaded, and large products are split into one block per pool thread. OpenBLAS's own
// threads synchronise by spinning and keep spinning after a product, so next to our pool they
// fight over the cores: on an idle machine both run at the same speed, and when another process
// competes for the cores the single pool is clearly faster (figures in docs/benchmarks.md).
#include "core/blas.h"

#include <algorithm>
#include <cstdint>

#include "core/threads.h"

#if defined(ANETRAIN_SCIPY_OPENBLAS)
extern "C" {
char* ANETRAIN_OPENBLAS_FN(get_corename)(void);
char* ANETRAIN_OPENBLAS_FN(get_config)(void);
void ANETRAIN_OPENBLAS_FN(set_num_threads)(int);
}
#endif

namespace anetrain::blas {
namespace {

// Products below this many multiply-adds are not worth splitting.
constexpr int64_t kSplitMacs = int64_t(1) << 22;
constexpr int64_t kSplitGemvMacs = int64_t(1) << 16;  // a matrix-vector product: one pass over A

void single_threaded_blas() {
#if defined(ANETRAIN_SCIPY_OPENBLAS)
    static const bool done = [] {
        ANETRAIN_OPENBLAS_FN(set_num_threads)(1);
        return true;
    }();
    (void)done;
#endif
}

void call(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
          float beta, float* C, int ldc) {
    BLAS_FN(sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                   lda, B, ldb, beta, C, ldc);
}

void call_gemv(bool ta, int M, int N, float alpha, const float* A, int lda, const float* x, float beta, float* y) {
    BLAS_FN(sgemv)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
}

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

int threads() { return threads::num_threads(); }

void set_threads(int n) { threads::set_num_threads(n); }

void sgemm_serial(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                  int ldb, float beta, float* C, int ldc) {
    single_threaded_blas();
    call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
#if defined(ANETRAIN_ACCELERATE)
    return call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);  // Accelerate schedules its own cores
#else
    single_threaded_blas();
    const int T = threads::num_threads();
    if (T <= 1 || int64_t(M) * N * K < kSplitMacs) return call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    // Split the larger of M and N into T blocks (multiples of 16 rows or columns).
    const bool by_rows = M >= N;
    const int extent = by_rows ? M : N;
    const int block = std::max(16, (extent / T + 15) / 16 * 16);
    const int parts = (extent + block - 1) / block;
    threads::parallel_for(size_t(parts), 1, [&](size_t b, size_t e) {
        for (size_t p = b; p < e; ++p) {
            const int o = int(p) * block, n = std::min(block, extent - o);
            if (by_rows) {
                call(ta, tb, n, N, K, alpha, ta ? A + o : A + size_t(o) * lda, lda, B, ldb, beta, C + size_t(o) * ldc,
                     ldc);
            } else {
                call(ta, tb, M, n, K, alpha, A, lda, tb ? B + size_t(o) * ldb : B + o, ldb, beta, C + o, ldc);
            }
        }
    });
#endif
}

void sgemv_serial(bool ta, int M, int N, float alpha, const float* A, int lda, const float* x, float beta, float* y) {
    single_threaded_blas();
    call_gemv(ta, M, N, alpha, A, lda, x, beta, y);
}

void sgemv(bool ta, int M, int N, float alpha, const float* A, int lda, const float* x, float beta, float* y) {
#if defined(ANETRAIN_ACCELERATE)
    return call_gemv(ta, M, N, alpha, A, lda, x, beta, y);
#else
    single_threaded_blas();
    const int T = threads::num_threads();
    if (T <= 1 || int64_t(M) * N < kSplitGemvMacs) return call_gemv(ta, M, N, alpha, A, lda, x, beta, y);
    // Blocks of y (multiples of 16 elements, a few per thread) taken by whichever thread is free:
    // rows of A, or its columns when transposed. A thread the OS delays then holds up little.
    threads::parallel_for(size_t(ta ? N : M), 16, [&](size_t b, size_t e) {
        const int o = int(b), n = int(e - b);
        if (ta) call_gemv(true, M, n, alpha, A + o, lda, x, beta, y + o);
        else call_gemv(false, n, N, alpha, A + size_t(o) * lda, lda, x, beta, y + o);
    });
#endif
}

}  // namespace anetrain::blas
