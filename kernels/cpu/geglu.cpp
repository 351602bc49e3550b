#include <cmath>

#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

void geglu_forward(const Tensor& u, Tensor& out) {
  const int64_t n = u.rows(), two_f = u.cols(), f = two_f / 2;
  GLMRT_CHECK(two_f % 2 == 0, "geglu_forward: odd input width ", u.str());
  GLMRT_CHECK(out.rows() == n && out.cols() == f, "geglu_forward: output ", out.str(), " for ",
              u.str());
  check_dtype(out, u.dtype(), "geglu_forward out");
  dispatch_float(u.dtype(), "geglu_forward", [&](auto zero) {
    using T = decltype(zero);
    const T* pu = u.data_as<T>();
    T* po = out.data_as<T>();
    const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const T* x1 = pu + r * two_f;
      const T* x2 = x1 + f;
      T* o = po + r * f;
      for (int64_t i = 0; i < f; ++i) {
        const T z = x2[i];
        o[i] = x1[i] * (T(0.5) * z * (T(1) + std::erf(z * inv_sqrt2)));
      }
    }
  });
}

}  // namespace glmrt::cpu

namespace glmrt::cpu {

void geglu_backward(const Tensor& u, const Tensor& dout, Tensor& du) {
  const int64_t n = u.rows(), two_f = u.cols(), f = two_f / 2;
  GLMRT_CHECK(dout.rows() == n && dout.cols() == f && du.shape() == u.shape(),
              "geglu_backward: u ", u.str(), ", dout ", dout.str(), ", du ", du.str());
  dispatch_float(u.dtype(), "geglu_backward", [&](auto zero) {
    using T = decltype(zero);
    const T* pu = u.data_as<T>();
    const T* pd = dout.data_as<T>();
    T* pdu = du.data_as<T>();
    const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
    const T inv_sqrt_2pi = static_cast<T>(0.39894228040143267794);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const T* x1 = pu + r * two_f;
      const T* x2 = x1 + f;
      const T* g = pd + r * f;
      T* d1 = pdu + r * two_f;
      T* d2 = d1 + f;
      for (int64_t i = 0; i < f; ++i) {
        const T z = x2[i];
        const T cdf = T(0.5) * (T(1) + std::erf(z * inv_sqrt2));
        d1[i] = g[i] * z * cdf;
        d2[i] = g[i] * x1[i] * (cdf + z * inv_sqrt_2pi * std::exp(T(-0.5) * z * z));
      }
    }
  });
}

}  // namespace glmrt::cpu
