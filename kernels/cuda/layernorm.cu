// LayerNorm forward and backward on the GPU: one block per row, fp32 statistics.
//
// Two-pass statistics (mean first, then the mean of squared deviations) rather than
// E[x²] - E[x]², which loses everything to cancellation when |mean| >> std. The row is read three
// times (sum, deviations, output); the second and third reads come from L1/L2 (a 12288-wide bf16
// row is 24 KB). y may alias x: each element is read before the same thread overwrites it.
#include "kernels/cuda/column_sums.cuh"
#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

template <class T>
__global__ void layernorm_kernel(const T* x, const T* __restrict__ weight,
                                 const T* __restrict__ bias, float eps, int64_t cols, T* y,
                                 float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  const float inv_cols = 1.0f / static_cast<float>(cols);

  // Unrolled so that a thread's loads of the row are in flight together (a decoding step's single
  // row otherwise waits on one load at a time: ~10 µs for a 2048-wide row).
  float sum = 0.0f;
#pragma unroll 8
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) sum += to_float(xr[i]);
  const float mean = block_sum(sum, scratch) * inv_cols;

  float squares = 0.0f;
#pragma unroll 8
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float dev = to_float(xr[i]) - mean;
    squares += dev * dev;
  }
  const float var = block_sum(squares, scratch) * inv_cols;  // biased variance
  const float rstd = 1.0f / sqrtf(var + eps);                // not rsqrtf: keep it exact

#pragma unroll 8
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float normed = (to_float(xr[i]) - mean) * rstd;
    yr[i] = from_float<T>(normed * to_float(weight[i]) + to_float(bias[i]));
  }
  if (threadIdx.x == 0) {
    if (mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }
}

// dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)) with g = dy * weight, x̂ = (x - mean) * rstd.
// dx may alias dy (each element is read before the same thread overwrites it).
template <class T>
__global__ void layernorm_backward_kernel(const T* x, const T* __restrict__ weight,
                                          const float* __restrict__ mean,
                                          const float* __restrict__ rstd, const T* dy, int64_t cols,
                                          T* dx) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  const T* dyr = dy + row * cols;
  T* dxr = dx + row * cols;
  const float mu = mean[row], rs = rstd[row];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float g = to_float(dyr[i]) * to_float(weight[i]);
    sum_g += g;
    sum_gx += g * (to_float(xr[i]) - mu) * rs;
  }
  const float inv_cols = 1.0f / static_cast<float>(cols);
  const float mean_g = block_sum(sum_g, scratch) * inv_cols;
  const float mean_gx = block_sum(sum_gx, scratch) * inv_cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float g = to_float(dyr[i]) * to_float(weight[i]);
    const float xhat = (to_float(xr[i]) - mu) * rs;
    dxr[i] = from_float<T>(rs * (g - mean_g - xhat * mean_gx));
  }
}

// (dy · x̂, dy) per element: the column sums are dweight and dbias.
template <class T>
struct LayerNormParamGradValue {
  const T* x;
  const T* dy;
  const float* mean;
  const float* rstd;
  int64_t cols;
  __device__ float2 operator()(int64_t r, int64_t c) const {
    const float g = to_float(dy[r * cols + c]);
    return make_float2(g * (to_float(x[r * cols + c]) - mean[r]) * rstd[r], g);
  }
};

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                       Tensor& y, Tensor* mean, Tensor* rstd) {
  check_cuda_tensor(x, "cuda layernorm_forward input");
  const Device device = x.device();
  const int64_t rows = x.rows(), cols = x.cols();
  check_operand(weight, device, x.dtype(), "cuda layernorm_forward weight");
  check_operand(bias, device, x.dtype(), "cuda layernorm_forward bias");
  check_operand(y, device, x.dtype(), "cuda layernorm_forward output");
  check_shape(weight, {cols}, "cuda layernorm_forward weight");
  check_shape(bias, {cols}, "cuda layernorm_forward bias");
  GLMRT_CHECK(y.shape() == x.shape(), "cuda layernorm_forward: output ", y.str(), " vs input ",
              x.str());
  GLMRT_CHECK(eps >= 0.0f, "cuda layernorm_forward: negative eps ", eps);
  float* mean_ptr = nullptr;
  float* rstd_ptr = nullptr;
  if (mean) {
    check_operand(*mean, device, DType::F32, "cuda layernorm_forward mean");
    GLMRT_CHECK(mean->numel() == rows, "cuda layernorm_forward: mean ", mean->str(), " for ", rows,
                " rows");
    mean_ptr = static_cast<float*>(mean->data());
  }
  if (rstd) {
    check_operand(*rstd, device, DType::F32, "cuda layernorm_forward rstd");
    GLMRT_CHECK(rstd->numel() == rows, "cuda layernorm_forward: rstd ", rstd->str(), " for ", rows,
                " rows");
    rstd_ptr = static_cast<float*>(rstd->data());
  }
  if (rows == 0) return;
  GLMRT_CHECK(cols > 0, "cuda layernorm_forward: empty rows in ", x.str());
  GLMRT_CHECK(rows <= INT32_MAX, "cuda layernorm_forward: too many rows in ", x.str());

  const int threads = threads_for_row(cols);
  DeviceGuard guard(device);
  dispatch_float(x.dtype(), "layernorm_forward", [&](auto zero) {
    using T = decltype(zero);
    layernorm_kernel<T><<<static_cast<unsigned>(rows), threads>>>(
        static_cast<const T*>(x.data()), static_cast<const T*>(weight.data()),
        static_cast<const T*>(bias.data()), eps, cols, static_cast<T*>(y.data()), mean_ptr,
        rstd_ptr);
    GLMRT_CUDA_CHECK_LAUNCH(layernorm_kernel);
  });
}

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor* dweight,
                        Tensor* dbias) {
  check_cuda_tensor(x, "cuda layernorm_backward input");
  const Device device = x.device();
  const DType dtype = x.dtype();
  const int64_t rows = x.rows(), cols = x.cols();
  check_operand(weight, device, dtype, "cuda layernorm_backward weight");
  check_shape(weight, {cols}, "cuda layernorm_backward weight");
  check_operand(mean, device, DType::F32, "cuda layernorm_backward mean");
  check_operand(rstd, device, DType::F32, "cuda layernorm_backward rstd");
  GLMRT_CHECK(mean.numel() == rows && rstd.numel() == rows, "cuda layernorm_backward: statistics ",
              mean.str(), " / ", rstd.str(), " for ", rows, " rows");
  check_operand(dy, device, dtype, "cuda layernorm_backward dy");
  check_operand(dx, device, dtype, "cuda layernorm_backward dx");
  GLMRT_CHECK(dy.shape() == x.shape() && dx.shape() == x.shape(), "cuda layernorm_backward: x ",
              x.str(), ", dy ", dy.str(), ", dx ", dx.str());
  if (dweight) {
    check_grad_operand(*dweight, device, dtype, "cuda layernorm_backward dweight");
    check_shape(*dweight, {cols}, "cuda layernorm_backward dweight");
  }
  if (dbias) {
    check_grad_operand(*dbias, device, dtype, "cuda layernorm_backward dbias");
    check_shape(*dbias, {cols}, "cuda layernorm_backward dbias");
  }
  GLMRT_CHECK(!dweight || !dbias || dweight->dtype() == dbias->dtype(),
              "cuda layernorm_backward: dweight ", dweight->str(), " and dbias ", dbias->str(),
              " differ in dtype");
  if (rows == 0) return;
  GLMRT_CHECK(cols > 0 && rows <= INT32_MAX, "cuda layernorm_backward: cannot handle ", x.str());

  DeviceGuard guard(device);
  const float* mean_ptr = static_cast<const float*>(mean.data());
  const float* rstd_ptr = static_cast<const float*>(rstd.data());
  // Parameter gradients first: they read dy, which dx may overwrite.
  if (dweight || dbias) {
    const DType grad_dtype = (dweight ? dweight : dbias)->dtype();
    dispatch_data_grad(dtype, grad_dtype, "layernorm_backward", [&](auto data, auto grad) {
      using T = decltype(data);
      using G = decltype(grad);
      const LayerNormParamGradValue<T> value{static_cast<const T*>(x.data()),
                                             static_cast<const T*>(dy.data()), mean_ptr, rstd_ptr,
                                             cols};
      launch_column_sums(rows, cols, value, dweight ? static_cast<G*>(dweight->data()) : nullptr,
                         dbias ? static_cast<G*>(dbias->data()) : nullptr);
    });
  }
  dispatch_float(dtype, "layernorm_backward", [&](auto zero) {
    using T = decltype(zero);
    layernorm_backward_kernel<T><<<static_cast<unsigned>(rows), threads_for_row(cols)>>>(
        static_cast<const T*>(x.data()), static_cast<const T*>(weight.data()), mean_ptr, rstd_ptr,
        static_cast<const T*>(dy.data()), cols, static_cast<T*>(dx.data()));
    GLMRT_CUDA_CHECK_LAUNCH(layernorm_backward_kernel);
  });
}

}  // namespace glmrt::cuda
