// Vocab-parallel cross-entropy on the GPU, in the three steps of kernels/op_signatures.inc so that
// tensor-parallel ranks can all-reduce between them. Statistics (row_max, sum_exp, target_logit,
// dloss) are F32 whatever the logits' storage; all arithmetic is fp32. One block per row for the
// two reductions, an elementwise kernel for the gradient.
#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

template <class T>
__global__ void row_max_kernel(const T* __restrict__ logits, int64_t v,
                               float* __restrict__ row_max) {
  __shared__ float scratch[32];
  const T* l = logits + blockIdx.x * v;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, to_float(l[j]));
  m = block_max(m, scratch);
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

template <class T>
__global__ void row_sums_kernel(const T* __restrict__ logits, int64_t v,
                                const int32_t* __restrict__ targets, int64_t vocab_start,
                                const float* __restrict__ row_max, float* __restrict__ sum_exp,
                                float* __restrict__ target_logit) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const T* l = logits + t * v;
  const float m = row_max[t];
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) s += expf(to_float(l[j]) - m);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) {
    sum_exp[t] = s;
    const int64_t k = static_cast<int64_t>(targets[t]) - vocab_start;
    target_logit[t] = (k >= 0 && k < v) ? to_float(l[k]) : 0.0f;
  }
}

// dlogits[t, j] = dloss[t] * (exp(l - max) / sum_exp - [j == target]); rows with dloss 0 get 0.
// dlogits may alias logits.
template <class T>
__global__ void cross_entropy_grad_kernel(const T* logits, int64_t rows, int64_t v,
                                          const int32_t* __restrict__ targets, int64_t vocab_start,
                                          const float* __restrict__ row_max,
                                          const float* __restrict__ sum_exp,
                                          const float* __restrict__ dloss, T* dlogits) {
  const int64_t n = rows * v;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / v, j = i - t * v;
    const float g = dloss[t];
    float d = 0.0f;
    if (g != 0.0f) {
      d = g * expf(to_float(logits[i]) - row_max[t]) * (1.0f / sum_exp[t]);
      if (j == static_cast<int64_t>(targets[t]) - vocab_start) d -= g;
    }
    dlogits[i] = from_float<T>(d);
  }
}

void check_stat(const Tensor& t, Device device, int64_t rows, const char* what) {
  check_operand(t, device, DType::F32, what);
  GLMRT_CHECK(t.numel() == rows, what, ": ", t.str(), " for ", rows, " rows");
}

void check_targets(const Tensor& targets, Device device, int64_t rows, const char* what) {
  check_operand(targets, device, DType::I32, what);
  GLMRT_CHECK(targets.numel() == rows, what, ": ", targets.str(), " for ", rows, " rows");
}

}  // namespace

void cross_entropy_max(const Tensor& logits, Tensor& row_max) {
  check_cuda_tensor(logits, "cuda cross_entropy_max logits");
  const int64_t rows = logits.rows(), v = logits.cols();
  check_stat(row_max, logits.device(), rows, "cuda cross_entropy_max row_max");
  if (rows == 0) return;
  GLMRT_CHECK(rows <= INT32_MAX, "cuda cross_entropy_max: too many rows in ", logits.str());
  DeviceGuard guard(logits.device());
  dispatch_float(logits.dtype(), "cross_entropy_max", [&](auto zero) {
    using T = decltype(zero);
    row_max_kernel<T><<<static_cast<unsigned>(rows), threads_for_row(v)>>>(
        static_cast<const T*>(logits.data()), v, static_cast<float*>(row_max.data()));
    GLMRT_CUDA_CHECK_LAUNCH(row_max_kernel);
  });
}

void cross_entropy_sums(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                        const Tensor& row_max, Tensor& sum_exp, Tensor& target_logit) {
  check_cuda_tensor(logits, "cuda cross_entropy_sums logits");
  const Device device = logits.device();
  const int64_t rows = logits.rows(), v = logits.cols();
  check_targets(targets, device, rows, "cuda cross_entropy_sums targets");
  check_stat(row_max, device, rows, "cuda cross_entropy_sums row_max");
  check_stat(sum_exp, device, rows, "cuda cross_entropy_sums sum_exp");
  check_stat(target_logit, device, rows, "cuda cross_entropy_sums target_logit");
  if (rows == 0) return;
  GLMRT_CHECK(rows <= INT32_MAX, "cuda cross_entropy_sums: too many rows in ", logits.str());
  DeviceGuard guard(device);
  dispatch_float(logits.dtype(), "cross_entropy_sums", [&](auto zero) {
    using T = decltype(zero);
    row_sums_kernel<T><<<static_cast<unsigned>(rows), threads_for_row(v)>>>(
        static_cast<const T*>(logits.data()), v, static_cast<const int32_t*>(targets.data()),
        vocab_start, static_cast<const float*>(row_max.data()), static_cast<float*>(sum_exp.data()),
        static_cast<float*>(target_logit.data()));
    GLMRT_CUDA_CHECK_LAUNCH(row_sums_kernel);
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                            const Tensor& row_max, const Tensor& sum_exp, const Tensor& dloss,
                            Tensor& dlogits) {
  check_cuda_tensor(logits, "cuda cross_entropy_backward logits");
  const Device device = logits.device();
  const int64_t rows = logits.rows(), v = logits.cols();
  check_targets(targets, device, rows, "cuda cross_entropy_backward targets");
  check_stat(row_max, device, rows, "cuda cross_entropy_backward row_max");
  check_stat(sum_exp, device, rows, "cuda cross_entropy_backward sum_exp");
  check_stat(dloss, device, rows, "cuda cross_entropy_backward dloss");
  check_operand(dlogits, device, logits.dtype(), "cuda cross_entropy_backward dlogits");
  GLMRT_CHECK(dlogits.shape() == logits.shape(), "cuda cross_entropy_backward: dlogits ",
              dlogits.str(), " for logits ", logits.str());
  if (rows * v == 0) return;
  DeviceGuard guard(device);
  dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
    using T = decltype(zero);
    cross_entropy_grad_kernel<T><<<grid_for(rows * v), kThreads>>>(
        static_cast<const T*>(logits.data()), rows, v, static_cast<const int32_t*>(targets.data()),
        vocab_start, static_cast<const float*>(row_max.data()),
        static_cast<const float*>(sum_exp.data()), static_cast<const float*>(dloss.data()),
        static_cast<T*>(dlogits.data()));
    GLMRT_CUDA_CHECK_LAUNCH(cross_entropy_grad_kernel);
  });
}

}  // namespace glmrt::cuda
