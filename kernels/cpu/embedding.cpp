#include <algorithm>

#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

void embedding_forward(const Tensor& ids, const Tensor& table, int64_t vocab_start, Tensor& out) {
  check_dtype(ids, DType::I32, "embedding_forward ids");
  const int64_t n = ids.numel(), h = table.cols(), rows = table.rows();
  GLMRT_CHECK(out.rows() == n && out.cols() == h, "embedding_forward: output ", out.str(),
              " for ", n, " ids and table ", table.str());
  check_dtype(out, table.dtype(), "embedding_forward out");
  const int32_t* pid = ids.data_as<int32_t>();
  dispatch_float(table.dtype(), "embedding_forward", [&](auto zero) {
    using T = decltype(zero);
    const T* pt = table.data_as<T>();
    T* po = out.data_as<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t r = static_cast<int64_t>(pid[t]) - vocab_start;
      if (r >= 0 && r < rows) std::copy(pt + r * h, pt + (r + 1) * h, po + t * h);
      else std::fill(po + t * h, po + (t + 1) * h, T(0));
    }
  });
}

}  // namespace glmrt::cpu
