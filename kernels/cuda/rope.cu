// Rotary position embedding on the GPU, in place on q and k of the head-interleaved qkv layout
// (kernels/op_signatures.inc). One thread per (token, head, pair i < d/2) rotates the pair
// (i, i + d/2) of both q and k, in fp32, with cos/sin gathered by the token's position id.
// The backward pass is the inverse (transposed) rotation: the same with sin negated.
#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

template <class T>
__global__ void rope_kernel(T* __restrict__ qkv, const int32_t* __restrict__ positions,
                            const float* __restrict__ cos_table,
                            const float* __restrict__ sin_table, int64_t max_positions,
                            int64_t tokens, int64_t num_heads, int64_t head_dim, float sin_sign) {
  const int64_t half = head_dim / 2;
  const int64_t n = tokens * num_heads * half;
  const int64_t row_width = num_heads * 3 * head_dim;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t head = (idx / half) % num_heads;
    const int64_t t = idx / (half * num_heads);
    const int64_t p = positions[t];
    T* q = qkv + t * row_width + 3 * head * head_dim;  // k follows at q + head_dim
    if (p < 0 || p >= max_positions) {
      // A position outside the table is a caller bug that a kernel cannot throw for (the CPU
      // op throws InputError): poison q and k so the result cannot pass for a valid one.
      const T nan = from_float<T>(__int_as_float(0x7fc00000));
      q[i] = q[i + half] = q[head_dim + i] = q[head_dim + i + half] = nan;
      continue;
    }
    const float c = cos_table[p * half + i];
    const float s = sin_sign * sin_table[p * half + i];
#pragma unroll
    for (int which = 0; which < 2; ++which) {  // q, then k
      T* x = q + which * head_dim;
      const float a = to_float(x[i]), b = to_float(x[i + half]);
      x[i] = from_float<T>(a * c - b * s);
      x[i + half] = from_float<T>(b * c + a * s);
    }
  }
}

void rope_rotate(Tensor& qkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                 int64_t num_heads, int64_t head_dim, bool inverse) {
  check_cuda_tensor(qkv, "cuda rope qkv");
  const Device device = qkv.device();
  const int64_t tokens = qkv.rows(), half = head_dim / 2;
  GLMRT_CHECK(
      num_heads > 0 && head_dim > 0 && head_dim % 2 == 0 && qkv.cols() == num_heads * 3 * head_dim,
      "cuda rope: ", qkv.str(), " is not [n, ", num_heads, " heads * 3 * ", head_dim,
      "] with an even head dim");
  check_operand(position_ids, device, DType::I32, "cuda rope position_ids");
  GLMRT_CHECK(position_ids.numel() == tokens, "cuda rope: ", position_ids.str(), " for ", tokens,
              " rows");
  check_operand(cos, device, DType::F32, "cuda rope cos table");
  check_operand(sin, device, DType::F32, "cuda rope sin table");
  GLMRT_CHECK(cos.ndim() == 2 && cos.cols() == half && sin.shape() == cos.shape(),
              "cuda rope: tables ", cos.str(), " / ", sin.str(), " for head_dim ", head_dim);
  const int64_t n = tokens * num_heads * half;
  if (n == 0) return;
  DeviceGuard guard(device);
  dispatch_float(qkv.dtype(), "rope", [&](auto zero) {
    using T = decltype(zero);
    rope_kernel<T><<<grid_for(n), kThreads>>>(
        static_cast<T*>(qkv.data()), static_cast<const int32_t*>(position_ids.data()),
        static_cast<const float*>(cos.data()), static_cast<const float*>(sin.data()), cos.rows(),
        tokens, num_heads, head_dim, inverse ? -1.0f : 1.0f);
    GLMRT_CUDA_CHECK_LAUNCH(rope_kernel);
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

}  // namespace glmrt::cuda
