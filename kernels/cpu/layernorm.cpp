#include <cmath>

#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                       Tensor& y, Tensor* mean, Tensor* rstd) {
  const int64_t rows = x.rows(), h = x.cols();
  check_shape(weight, {h}, "layernorm_forward weight");
  check_shape(bias, {h}, "layernorm_forward bias");
  GLMRT_CHECK(y.shape() == x.shape(), "layernorm_forward: output ", y.str(), " vs input ", x.str());
  dispatch_float(x.dtype(), "layernorm_forward", [&](auto zero) {
    using T = decltype(zero);
    const T* px = x.data_as<T>();
    const T* pw = weight.data_as<T>();
    const T* pb = bias.data_as<T>();
    T* py = y.data_as<T>();
    T* pm = mean ? mean->data_as<T>() : nullptr;
    T* pr = rstd ? rstd->data_as<T>() : nullptr;
    if (mean) GLMRT_CHECK(mean->numel() == rows, "layernorm_forward mean ", mean->str());
    if (rstd) GLMRT_CHECK(rstd->numel() == rows, "layernorm_forward rstd ", rstd->str());
#pragma omp parallel for schedule(static) if (parallel_rows(rows, h))
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * h;
      double sum = 0;  // double accumulation: exact enough for h = 12288 in fp32
      for (int64_t i = 0; i < h; ++i) sum += xr[i];
      const double mu = sum / static_cast<double>(h);
      double sq = 0;
      for (int64_t i = 0; i < h; ++i) sq += (xr[i] - mu) * (xr[i] - mu);
      const double rs = 1.0 / std::sqrt(sq / static_cast<double>(h) + static_cast<double>(eps));
      T* yr = py + r * h;
      for (int64_t i = 0; i < h; ++i) yr[i] = static_cast<T>((xr[i] - mu) * rs) * pw[i] + pb[i];
      if (pm) pm[r] = static_cast<T>(mu);
      if (pr) pr[r] = static_cast<T>(rs);
    }
  });
}

}  // namespace glmrt::cpu

namespace glmrt::cpu {

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor* dweight,
                        Tensor* dbias) {
  const int64_t rows = x.rows(), h = x.cols();
  GLMRT_CHECK(dy.shape() == x.shape() && dx.shape() == x.shape(), "layernorm_backward: x ",
              x.str(), ", dy ", dy.str(), ", dx ", dx.str());
  GLMRT_CHECK(mean.numel() == rows && rstd.numel() == rows, "layernorm_backward: statistics ",
              mean.str(), " / ", rstd.str(), " for ", rows, " rows");
  dispatch_float(x.dtype(), "layernorm_backward", [&](auto zero) {
    using T = decltype(zero);
    const T* px = x.data_as<T>();
    const T* pw = weight.data_as<T>();
    const T* pm = mean.data_as<T>();
    const T* pr = rstd.data_as<T>();
    const T* pdy = dy.data_as<T>();
    T* pdx = dx.data_as<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * h;
      const T* dyr = pdy + r * h;
      double sum_g = 0, sum_gx = 0;  // Σ dy·w and Σ dy·w·x̂
      for (int64_t i = 0; i < h; ++i) {
        const double xhat = (xr[i] - pm[r]) * pr[r];
        const double g = static_cast<double>(dyr[i]) * pw[i];
        sum_g += g;
        sum_gx += g * xhat;
      }
      const double mg = sum_g / h, mgx = sum_gx / h;
      T* dxr = pdx + r * h;
      for (int64_t i = 0; i < h; ++i) {
        const double xhat = (xr[i] - pm[r]) * pr[r];
        dxr[i] = static_cast<T>(pr[r] * (static_cast<double>(dyr[i]) * pw[i] - mg - xhat * mgx));
      }
    }
    if (dweight || dbias) {
      T* pdw = dweight ? dweight->data_as<T>() : nullptr;
      T* pdb = dbias ? dbias->data_as<T>() : nullptr;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < h; ++i) {
        double sw = 0, sb = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const double g = pdy[r * h + i];
          sw += g * (px[r * h + i] - pm[r]) * pr[r];
          sb += g;
        }
        if (pdw) pdw[i] += static_cast<T>(sw);
        if (pdb) pdb[i] += static_cast<T>(sb);
      }
    }
  });
}

}  // namespace glmrt::cpu
