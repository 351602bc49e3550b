// Optimizer ops on the GPU: AdamW on fp32 master weights (torch.optim.AdamW semantics, the same
// fp32 operation order as the CPU op) and the sum of squares behind gradient norms and overflow
// checks (accumulated in double, deterministic: fixed per-block partials summed on the host).
#include <cmath>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v, int64_t n, float beta1,
                             float beta2, float eps, float step_size, float decay, float bc2_sqrt,
                             float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = grad[i] * grad_scale;
    float p = param[i] * decay;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

constexpr int kSumBlocks = 1024;  // partial sums per call (fixed, so the result is reproducible)

// partial[blockIdx.x] = Σ x² over this block's grid-stride elements, in double.
template <class T>
__global__ void sum_squares_kernel(const T* __restrict__ x, int64_t n, double* partial) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const double v = to_float(x[i]);
    s += v * v;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(kFullMask, s, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += scratch[w];
    partial[blockIdx.x] = total;
  }
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step, float grad_scale) {
  check_cuda_tensor(param, "cuda adamw_update param");
  const Device device = param.device();
  check_operand(param, device, DType::F32, "cuda adamw_update param");
  check_operand(grad, device, DType::F32, "cuda adamw_update grad");
  check_operand(m, device, DType::F32, "cuda adamw_update m");
  check_operand(v, device, DType::F32, "cuda adamw_update v");
  const int64_t n = param.numel();
  GLMRT_CHECK(grad.numel() == n && m.numel() == n && v.numel() == n,
              "cuda adamw_update: ", param.str(), " / ", grad.str(), " / ", m.str(), " / ",
              v.str());
  GLMRT_CHECK(step >= 1, "cuda adamw_update: step counts from 1, got ", step);
  if (n == 0) return;
  // Bias corrections exactly as the CPU op computes them.
  const float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(beta1), step));
  const float bc2_sqrt =
      std::sqrt(1.0f - static_cast<float>(std::pow(static_cast<double>(beta2), step)));
  const float step_size = lr / bc1, decay = 1.0f - lr * weight_decay;
  DeviceGuard guard(device);
  adamw_kernel<<<grid_for(n), kThreads>>>(
      static_cast<float*>(param.data()), static_cast<const float*>(grad.data()),
      static_cast<float*>(m.data()), static_cast<float*>(v.data()), n, beta1, beta2, eps, step_size,
      decay, bc2_sqrt, grad_scale);
  GLMRT_CUDA_CHECK_LAUNCH(adamw_kernel);
}

double sum_squares(const Tensor& x) {
  check_cuda_tensor(x, "cuda sum_squares");
  const int64_t n = x.numel();
  if (n == 0) return 0.0;
  DeviceGuard guard(x.device());
  const unsigned blocks = std::min(grid_for(n), static_cast<unsigned>(kSumBlocks));
  DeviceScratch partial(blocks * sizeof(double));
  dispatch_float(x.dtype(), "sum_squares", [&](auto zero) {
    using T = decltype(zero);
    sum_squares_kernel<T>
        <<<blocks, kThreads>>>(static_cast<const T*>(x.data()), n, partial.as<double>());
    GLMRT_CUDA_CHECK_LAUNCH(sum_squares_kernel);
  });
  std::vector<double> host(blocks);
  GLMRT_CUDA_CHECK(cudaMemcpy(host.data(), partial.as<double>(), blocks * sizeof(double),
                              cudaMemcpyDeviceToHost));
  double total = 0.0;
  for (double p : host) total += p;  // fixed order: the same bits on every run
  return total;
}

}  // namespace glmrt::cuda
