#include <cmath>

#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step, float grad_scale) {
  for (const Tensor* t : std::initializer_list<const Tensor*>{&param, &grad, &m, &v})
    check_dtype(*t, DType::F32, "adamw_update");
  const int64_t n = param.numel();
  GLMRT_CHECK(grad.numel() == n && m.numel() == n && v.numel() == n, "adamw_update: ",
              param.str(), " / ", grad.str(), " / ", m.str(), " / ", v.str());
  GLMRT_CHECK(step >= 1, "adamw_update: step counts from 1, got ", step);
  float* p = param.data_as<float>();
  const float* g = grad.data_as<float>();
  float* pm = m.data_as<float>();
  float* pv = v.data_as<float>();
  const float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(beta1), step));
  const float bc2_sqrt = std::sqrt(1.0f - static_cast<float>(std::pow(static_cast<double>(beta2), step)));
  const float step_size = lr / bc1, decay = 1.0f - lr * weight_decay;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * grad_scale;
    p[i] *= decay;
    pm[i] = beta1 * pm[i] + (1.0f - beta1) * gi;
    pv[i] = beta2 * pv[i] + (1.0f - beta2) * gi * gi;
    p[i] -= step_size * pm[i] / (std::sqrt(pv[i]) / bc2_sqrt + eps);
  }
}

double sum_squares(const Tensor& x) {
  return dispatch_float(x.dtype(), "sum_squares", [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data_as<T>();
    const int64_t n = x.numel();
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    return s;
  });
}

}  // namespace glmrt::cpu
