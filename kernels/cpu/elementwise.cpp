#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

void scale_add(float alpha, const Tensor& a, const Tensor& b, Tensor& out) {
  GLMRT_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "scale_add: ", a.str(), ", ",
              b.str(), " -> ", out.str());
  check_dtype(b, a.dtype(), "scale_add b");
  check_dtype(out, a.dtype(), "scale_add out");
  dispatch_float(a.dtype(), "scale_add", [&](auto zero) {
    using T = decltype(zero);
    const T* pa = a.data_as<T>();
    const T* pb = b.data_as<T>();
    T* po = out.data_as<T>();
    const T al = static_cast<T>(alpha);
    const int64_t n = a.numel();
#pragma omp parallel for simd schedule(static) if (n >= parallel_min_values)
    for (int64_t i = 0; i < n; ++i) po[i] = al * pa[i] + pb[i];
  });
}

void scale_inplace(Tensor& x, float s) {
  dispatch_float(x.dtype(), "scale_inplace", [&](auto zero) {
    using T = decltype(zero);
    T* p = x.data_as<T>();
    const T f = static_cast<T>(s);
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) if (n >= parallel_min_values)
    for (int64_t i = 0; i < n; ++i) p[i] *= f;
  });
}

void convert(const Tensor& src, Tensor& dst) {
  GLMRT_CHECK(src.numel() == dst.numel(), "convert: ", src.str(), " -> ", dst.str());
  convert_host(src.dtype(), src.data(), dst.dtype(), dst.data(), src.numel());
}

}  // namespace glmrt::cpu

namespace glmrt::cpu {

void dropout_apply(Tensor& x, const DropoutSpec& spec) {
  if (!spec.enabled()) return;
  GLMRT_CHECK(spec.p < 1.0f, "dropout_apply: p must be < 1, got ", spec.p);
  dispatch_float(x.dtype(), "dropout_apply", [&](auto zero) {
    using T = decltype(zero);
    T* p = x.data_as<T>();
    const T scale = T(1) / (T(1) - static_cast<T>(spec.p));
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n >= parallel_min_values)
    for (int64_t i = 0; i < n; ++i)
      p[i] = dropout_keep(spec, spec.offset + static_cast<uint64_t>(i)) ? p[i] * scale : T(0);
  });
}

}  // namespace glmrt::cpu
