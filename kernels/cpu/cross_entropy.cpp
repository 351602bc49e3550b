// Cross-entropy over (a vocabulary shard of) the logits, in three steps so tensor-parallel ranks
// can all-reduce between them; the logits are never gathered.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

namespace {
void check_stat(const Tensor& t, int64_t n, DType dtype, const char* what) {
  GLMRT_CHECK(t.numel() == n, what, ": ", t.str(), " for ", n, " rows");
  check_dtype(t, dtype, what);
}
}  // namespace

void cross_entropy_max(const Tensor& logits, Tensor& row_max) {
  const int64_t n = logits.rows(), v = logits.cols();
  check_stat(row_max, n, logits.dtype(), "cross_entropy_max row_max");
  dispatch_float(logits.dtype(), "cross_entropy_max", [&](auto zero) {
    using T = decltype(zero);
    const T* pl = logits.data_as<T>();
    T* pm = row_max.data_as<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t)
      pm[t] = v ? *std::max_element(pl + t * v, pl + (t + 1) * v)
                : -std::numeric_limits<T>::infinity();
  });
}

void cross_entropy_sums(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                        const Tensor& row_max, Tensor& sum_exp, Tensor& target_logit) {
  const int64_t n = logits.rows(), v = logits.cols();
  check_dtype(targets, DType::I32, "cross_entropy_sums targets");
  GLMRT_CHECK(targets.numel() == n, "cross_entropy_sums: ", targets.str(), " for ", n, " rows");
  check_stat(row_max, n, logits.dtype(), "cross_entropy_sums row_max");
  check_stat(sum_exp, n, logits.dtype(), "cross_entropy_sums sum_exp");
  check_stat(target_logit, n, logits.dtype(), "cross_entropy_sums target_logit");
  const int32_t* tg = targets.data_as<int32_t>();
  dispatch_float(logits.dtype(), "cross_entropy_sums", [&](auto zero) {
    using T = decltype(zero);
    const T* pl = logits.data_as<T>();
    const T* pm = row_max.data_as<T>();
    T* ps = sum_exp.data_as<T>();
    T* pt = target_logit.data_as<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const T* l = pl + t * v;
      T s = 0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(l[j] - pm[t]);
      ps[t] = s;
      const int64_t k = static_cast<int64_t>(tg[t]) - vocab_start;
      pt[t] = (k >= 0 && k < v) ? l[k] : T(0);
    }
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                            const Tensor& row_max, const Tensor& sum_exp, const Tensor& dloss,
                            Tensor& dlogits) {
  const int64_t n = logits.rows(), v = logits.cols();
  GLMRT_CHECK(dlogits.shape() == logits.shape(), "cross_entropy_backward: dlogits ",
              dlogits.str(), " for logits ", logits.str());
  check_stat(dloss, n, logits.dtype(), "cross_entropy_backward dloss");
  const int32_t* tg = targets.data_as<int32_t>();
  dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
    using T = decltype(zero);
    const T* pl = logits.data_as<T>();
    const T* pm = row_max.data_as<T>();
    const T* ps = sum_exp.data_as<T>();
    const T* pg = dloss.data_as<T>();
    T* pd = dlogits.data_as<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const T* l = pl + t * v;
      T* d = pd + t * v;
      const T g = pg[t], inv = T(1) / ps[t];
      if (g == T(0)) {
        std::fill(d, d + v, T(0));
        continue;
      }
      for (int64_t j = 0; j < v; ++j) d[j] = g * std::exp(l[j] - pm[t]) * inv;
      const int64_t k = static_cast<int64_t>(tg[t]) - vocab_start;
      if (k >= 0 && k < v) d[k] -= g;
    }
  });
}

}  // namespace glmrt::cpu
