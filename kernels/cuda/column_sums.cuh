// Deterministic column sums for parameter gradients (bias, LayerNorm weight and bias):
//   out0[c] += Σ_r value(r, c).x,   out1[c] += Σ_r value(r, c).y
// Each block owns 32 adjacent columns (coalesced row reads) and 8 row groups; every thread sums
// its strided rows in fp32 and the 8 partials are combined in a fixed order, so the result does
// not depend on scheduling (no atomics). Each output is rounded to its dtype once.
#pragma once

#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

constexpr int kColumnSumRowGroups = 8;

template <class G, class ValueFn>
__global__ void column_sums_kernel(int64_t rows, int64_t cols, ValueFn value, G* out0, G* out1) {
  __shared__ float partial[2][kColumnSumRowGroups][33];  // +1 column: no bank conflicts
  const int64_t c = blockIdx.x * int64_t{32} + threadIdx.x;
  float2 sum = make_float2(0.0f, 0.0f);
  if (c < cols) {
    for (int64_t r = threadIdx.y; r < rows; r += kColumnSumRowGroups) {
      const float2 v = value(r, c);
      sum.x += v.x;
      sum.y += v.y;
    }
  }
  partial[0][threadIdx.y][threadIdx.x] = sum.x;
  partial[1][threadIdx.y][threadIdx.x] = sum.y;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total0 = 0.0f, total1 = 0.0f;
#pragma unroll
    for (int g = 0; g < kColumnSumRowGroups; ++g) {
      total0 += partial[0][g][threadIdx.x];
      total1 += partial[1][g][threadIdx.x];
    }
    if (out0) out0[c] = from_float<G>(to_float(out0[c]) + total0);
    if (out1) out1[c] = from_float<G>(to_float(out1[c]) + total1);
  }
}

// Launches column_sums_kernel on the current device (either output may be null).
template <class G, class ValueFn>
void launch_column_sums(int64_t rows, int64_t cols, ValueFn value, G* out0, G* out1) {
  if (cols == 0 || (!out0 && !out1)) return;
  const int64_t blocks = (cols + 31) / 32;
  GLMRT_CHECK(blocks <= INT32_MAX, "cuda column sums: ", cols, " columns is too many");
  column_sums_kernel<G><<<static_cast<unsigned>(blocks), dim3(32, kColumnSumRowGroups)>>>(
      rows, cols, value, out0, out1);
  GLMRT_CUDA_CHECK_LAUNCH(column_sums_kernel);
}

}  // namespace glmrt::cuda
