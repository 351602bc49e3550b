// Shared helpers of the CPU kernels (fp32 reference and fp64 for gradient checks).
#pragma once

#include <cblas.h>

#include "kernels/ops.h"

namespace glmrt::cpu {

// Row and element loops run on the calling thread below this many values: an OpenMP fork and
// its barrier (a few µs) cost more than such a loop (one decoding row of a layernorm, RoPE,
// GeGLU or residual add: 2-11 K values), and a batch-1 decoding step runs ~10 of them per layer.
constexpr int64_t parallel_min_values = int64_t{1} << 15;
// Whether a loop over `rows` rows of `width` values each is worth an OpenMP fork.
inline bool parallel_rows(int64_t rows, int64_t width) {
  return rows > 1 && rows * width >= parallel_min_values;
}

// Calls fn(T{}) with T = float or double according to `dtype`; other dtypes are refused.
template <class Fn>
auto dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::F32: return fn(float{});
    case DType::F64: return fn(double{});
    default:
      throw InternalError(detail::concat(op, ": the CPU backend computes in F32 or F64, got ",
                                         dtype_name(dtype)));
  }
}

inline void check_dtype(const Tensor& t, DType dtype, const char* what) {
  GLMRT_CHECK(t.dtype() == dtype, what, ": expected ", dtype_name(dtype), ", got ", t.str());
}

// Row-major BLAS GEMM on raw pointers with leading dimensions (used by attention as well).
inline void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                      const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                      double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace glmrt::cpu
