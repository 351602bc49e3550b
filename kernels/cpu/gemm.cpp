// GEMM and linear layers through the CPU BLAS (OpenBLAS).
#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/small_gemm.h"

namespace glmrt::cpu {

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
          float beta) {
  check_dtype(b, a.dtype(), "gemm b");
  check_dtype(c, a.dtype(), "gemm c");
  const int64_t m = trans_a ? a.cols() : a.rows();
  const int64_t k = trans_a ? a.rows() : a.cols();
  const int64_t kb = trans_b ? b.cols() : b.rows();
  const int64_t n = trans_b ? b.rows() : b.cols();
  GLMRT_CHECK(k == kb, "gemm: inner dimensions differ: ", a.str(), (trans_a ? "ᵀ" : ""), " · ",
              b.str(), (trans_b ? "ᵀ" : ""));
  GLMRT_CHECK(c.rows() == m && c.cols() == n, "gemm: output ", c.str(), " is not [", m, ", ", n,
              "]");
  if (m == 0 || n == 0) return;
  dispatch_float(a.dtype(), "gemm", [&](auto zero) {
    using T = decltype(zero);
    if (k == 0) {  // BLAS leaves c untouched; the definition says beta * c
      T* pc = c.data_as<T>();
      for (int64_t i = 0; i < m * n; ++i) pc[i] = beta == 0 ? T(0) : T(beta) * pc[i];
      return;
    }
    if (beta == 0) std::memset(c.data(), 0, c.nbytes());  // never propagate NaN garbage from c
    blas_gemm(trans_a, trans_b, m, n, k, T(alpha), a.data_as<T>(), a.cols(), b.data_as<T>(),
              b.cols(), T(beta), c.data_as<T>(), n);
  });
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  GLMRT_CHECK(w.ndim() == 2, "linear_forward: weight must be 2-D, got ", w.str());
  const int64_t n = x.rows(), m = w.dim(0);
  GLMRT_CHECK(x.cols() == w.dim(1), "linear_forward: input ", x.str(), " does not match weight ",
              w.str());
  GLMRT_CHECK(y.rows() == n && y.cols() == m, "linear_forward: output ", y.str(), " is not [", n,
              ", ", m, "]");
  if (small_linear_forward(x, w, bias, y)) return;  // a few rows (decoding): weights read once
  float beta = 0.0f;
  if (bias && bias->defined()) {
    check_shape(*bias, {m}, "linear_forward bias");
    check_dtype(*bias, y.dtype(), "linear_forward bias");
    dispatch_float(y.dtype(), "linear_forward", [&](auto zero) {
      using T = decltype(zero);
      const T* pb = bias->data_as<T>();
      T* py = y.data_as<T>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) std::copy(pb, pb + m, py + i * m);
    });
    beta = 1.0f;
  }
  cpu::gemm(x, false, w, true, y, 1.0f, beta);
}

}  // namespace glmrt::cpu

namespace glmrt::cpu {

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* dbias) {
  const int64_t n = x.rows(), m = w.dim(0);
  GLMRT_CHECK(dy.rows() == n && dy.cols() == m && x.cols() == w.dim(1), "linear_backward: x ",
              x.str(), ", w ", w.str(), ", dy ", dy.str());
  if (dx) cpu::gemm(dy, false, w, false, *dx, 1.0f, 0.0f);
  if (dw) cpu::gemm(dy, true, x, false, *dw, 1.0f, 1.0f);
  if (dbias) {
    check_shape(*dbias, {m}, "linear_backward dbias");
    check_dtype(*dbias, dy.dtype(), "linear_backward dbias");
    dispatch_float(dy.dtype(), "linear_backward", [&](auto zero) {
      using T = decltype(zero);
      const T* pdy = dy.data_as<T>();
      T* pb = dbias->data_as<T>();
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < m; ++j) {
        T s = 0;
        for (int64_t i = 0; i < n; ++i) s += pdy[i * m + j];
        pb[j] += s;
      }
    });
  }
}

}  // namespace glmrt::cpu
