// The one place that names a BLAS vendor. Everything else calls BLAS_FN(sgemm)(...) with the
// standard CBLAS enums.
//   macOS: Accelerate (ACCELERATE_NEW_LAPACK).
//   Linux: the scipy-openblas32 wheel, whose symbols carry the "scipy_" prefix.
#pragma once
#include <string>

#if defined(ANETRAIN_ACCELERATE)
#include <Accelerate/Accelerate.h>
typedef int blas_int;
#define BLAS_FN(name) cblas_##name
#elif defined(ANETRAIN_SCIPY_OPENBLAS)
#include <cblas.h>
#ifndef BLAS_SYMBOL_SUFFIX
#define BLAS_SYMBOL_SUFFIX
#endif
#define ANETRAIN_BLAS_CAT3_(a, b, c) a##b##c
#define ANETRAIN_BLAS_CAT3(a, b, c) ANETRAIN_BLAS_CAT3_(a, b, c)
#define BLAS_FN(name) ANETRAIN_BLAS_CAT3(BLAS_SYMBOL_PREFIX, cblas_##name, BLAS_SYMBOL_SUFFIX)
#define ANETRAIN_OPENBLAS_FN(name) ANETRAIN_BLAS_CAT3(BLAS_SYMBOL_PREFIX, openblas_##name, BLAS_SYMBOL_SUFFIX)
typedef blasint blas_int;
#else
#error "no BLAS configured: build through setup.py (Accelerate on macOS, scipy-openblas32 on Linux)"
#endif

namespace anetrain::blas {
std::string library();   // "accelerate" or "scipy-openblas32 <version>"
std::string core_type(); // OpenBLAS kernel family in use (e.g. "Haswell"); "n/a" for Accelerate
int threads();           // threads of the pool large products are split across
void set_threads(int n);  // = threads::set_num_threads

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C, with explicit leading dimensions. OpenBLAS
// runs single-threaded; products of 4M multiply-adds and more are split into one block per
// thread of anetrain's pool (Accelerate schedules itself).
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);
// The same on the calling thread only: for callers that parallelise over many products
// themselves (a batched matmul runs one product per pool thread; one sync instead of one each).
void sgemm_serial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc);

// Row-major y = alpha * op(A) x + beta * y for A [M,N] (leading dimension lda): y has M elements,
// or N with trans_a. Products of 64K multiply-adds and more are split into blocks of y across
// anetrain's pool (a matrix-vector product is bound by reading A, which one core cannot do at
// the memory's full speed).
void sgemv(bool trans_a, int M, int N, float alpha, const float* A, int lda, const float* x, float beta, float* y);
// The same on the calling thread only.
void sgemv_serial(bool trans_a, int M, int N, float alpha, const float* A, int lda, const float* x, float beta,
                  float* y);
}  // namespace anetrain::blas
