#include "core/blas.h"

#if defined(ANETRAIN_SCIPY_OPENBLAS)
extern "C" {
char* ANETRAIN_OPENBLAS_FN(get_corename)(void);
char* ANETRAIN_OPENBLAS_FN(get_config)(void);
int ANETRAIN_OPENBLAS_FN(get_num_threads)(void);
void ANETRAIN_OPENBLAS_FN(set_num_threads)(int);
}
#endif

namespace anetrain::blas {

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
    return ANETRAIN_OPENBLAS_FN(get_num_threads)();
#endif
}

void set_threads(int n) {
#if defined(ANETRAIN_SCIPY_OPENBLAS)
    ANETRAIN_OPENBLAS_FN(set_num_threads)(n);
#else
    (void)n;
#endif
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
    BLAS_FN(sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                   lda, B, ldb, beta, C, ldc);
}

}  // namespace anetrain::blas
