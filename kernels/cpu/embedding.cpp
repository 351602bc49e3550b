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

namespace glmrt::cpu {

void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start,
                        Tensor& dtable) {
  check_dtype(ids, DType::I32, "embedding_backward ids");
  const int64_t n = ids.numel(), h = dtable.cols(), rows = dtable.rows();
  GLMRT_CHECK(dout.rows() == n && dout.cols() == h, "embedding_backward: dout ", dout.str(),
              " for ", n, " ids and table ", dtable.str());
  const int32_t* pid = ids.data_as<int32_t>();
  dispatch_float(dout.dtype(), "embedding_backward", [&](auto zero) {
    using T = decltype(zero);
    const T* pd = dout.data_as<T>();
    T* pt = dtable.data_as<T>();
    // Parallel over column blocks: no two threads add into the same element.
    constexpr int64_t kBlock = 64;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < h; c0 += kBlock) {
      const int64_t c1 = std::min(h, c0 + kBlock);
      for (int64_t t = 0; t < n; ++t) {
        const int64_t r = static_cast<int64_t>(pid[t]) - vocab_start;
        if (r < 0 || r >= rows) continue;
        for (int64_t c = c0; c < c1; ++c) pt[r * h + c] += pd[t * h + c];
      }
    }
  });
}

}  // namespace glmrt::cpu
