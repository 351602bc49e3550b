#include "kernels/cpu/cpu_common.h"

namespace glmrt::cpu {

namespace {
// Rotates q and k of every head by +angle (forward) or -angle (backward: the transpose).
void rope_rotate(Tensor& qkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                 int64_t num_heads, int64_t head_dim, bool inverse) {
  const int64_t n = qkv.rows(), half = head_dim / 2;
  GLMRT_CHECK(head_dim % 2 == 0 && qkv.cols() == num_heads * 3 * head_dim, "rope_forward: ",
              qkv.str(), " is not [n, ", num_heads, " heads * 3 * ", head_dim, "]");
  check_dtype(position_ids, DType::I32, "rope_forward position_ids");
  GLMRT_CHECK(position_ids.numel() == n, "rope_forward: ", position_ids.str(), " for ", n, " rows");
  check_dtype(cos, DType::F32, "rope_forward cos");
  check_dtype(sin, DType::F32, "rope_forward sin");
  GLMRT_CHECK(cos.cols() == half && sin.shape() == cos.shape(), "rope_forward: tables ",
              cos.str(), " / ", sin.str(), " for head_dim ", head_dim);
  const int64_t max_pos = cos.rows();
  const int32_t* pos = position_ids.data_as<int32_t>();
  const float* pc = cos.data_as<float>();
  const float* ps = sin.data_as<float>();
  for (int64_t t = 0; t < n; ++t)  // checked up front: nothing may throw inside the parallel loop
    GLMRT_CHECK(pos[t] >= 0 && pos[t] < max_pos, "rope_forward: position ", pos[t],
                " outside the table of ", max_pos);
  dispatch_float(qkv.dtype(), "rope_forward", [&](auto zero) {
    using T = decltype(zero);
    T* base = qkv.data_as<T>();
#pragma omp parallel for schedule(static) if (parallel_rows(n, qkv.cols()))
    for (int64_t t = 0; t < n; ++t) {
      const int32_t p = pos[t];
      const float* c = pc + p * half;
      const float* s = ps + p * half;
      for (int64_t h = 0; h < num_heads; ++h) {
        for (int which = 0; which < 2; ++which) {  // q, then k
          T* x = base + t * qkv.cols() + (3 * h + which) * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            const T a = x[i], b = x[i + half];
            const T sn = inverse ? -T(s[i]) : T(s[i]);
            x[i] = a * T(c[i]) - b * sn;
            x[i + half] = b * T(c[i]) + a * sn;
          }
        }
      }
    }
  });
}

}  // namespace

void rope_forward(Tensor& qkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                  int64_t num_heads, int64_t head_dim) {
  rope_rotate(qkv, position_ids, cos, sin, num_heads, head_dim, false);
}

void rope_backward(Tensor& dqkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                   int64_t num_heads, int64_t head_dim) {
  rope_rotate(dqkv, position_ids, cos, sin, num_heads, head_dim, true);
}

}  // namespace glmrt::cpu
