// Elementwise ops on the GPU: GeGLU (forward and backward), the scaled residual add, scaling,
// dtype conversion and dropout. All arithmetic in fp32, one rounding on the store.
// Simple grid-stride loops: these ops are memory-bound and their loads are coalesced.
#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

// Grid-stride loop index helpers.
__device__ __forceinline__ int64_t global_index() {
  return blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return int64_t{gridDim.x} * blockDim.x; }

// out[r, i] = u[r, i] * gelu(u[r, F + i]), exact erf GELU.
template <class T>
__global__ void geglu_kernel(const T* __restrict__ u, T* __restrict__ out, int64_t rows,
                             int64_t f) {
  const int64_t n = rows * f;
  for (int64_t i = global_index(); i < n; i += grid_stride()) {
    const int64_t r = i / f, col = i - r * f;
    const T* row = u + r * 2 * f;
    const float x1 = to_float(row[col]);
    const float z = to_float(row[f + col]);
    const float gelu = 0.5f * z * (1.0f + erff(z * 0.70710678118654752440f));
    out[i] = from_float<T>(x1 * gelu);
  }
}

// du = [dout * gelu(z), dout * x1 * gelu'(z)] for u = [x1, z], gelu'(z) = Φ(z) + z φ(z).
// du may alias u (each row element pair is read before the same thread writes it).
template <class T>
__global__ void geglu_backward_kernel(const T* u, const T* __restrict__ dout, T* du, int64_t rows,
                                      int64_t f) {
  const int64_t n = rows * f;
  for (int64_t i = global_index(); i < n; i += grid_stride()) {
    const int64_t r = i / f, col = i - r * f;
    const T* row = u + r * 2 * f;
    const float x1 = to_float(row[col]);
    const float z = to_float(row[f + col]);
    const float g = to_float(dout[i]);
    const float cdf = 0.5f * (1.0f + erff(z * 0.70710678118654752440f));
    const float pdf = 0.39894228040143267794f * expf(-0.5f * z * z);
    T* drow = du + r * 2 * f;
    drow[col] = from_float<T>(g * z * cdf);
    drow[f + col] = from_float<T>(g * x1 * (cdf + z * pdf));
  }
}

// x *= s.
template <class T>
__global__ void scale_kernel(T* x, int64_t n, float s) {
  for (int64_t i = global_index(); i < n; i += grid_stride())
    x[i] = from_float<T>(to_float(x[i]) * s);
}

// out = alpha * a + b; out may alias a or b (each element is read before it is written).
template <class T>
__global__ void scale_add_kernel(float alpha, const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = global_index(); i < n; i += grid_stride())
    out[i] = from_float<T>(alpha * to_float(a[i]) + to_float(b[i]));
}

template <class Src, class Dst>
__global__ void convert_kernel(const Src* __restrict__ src, Dst* __restrict__ dst, int64_t n) {
  for (int64_t i = global_index(); i < n; i += grid_stride())
    dst[i] = from_float<Dst>(to_float(src[i]));
}

// x[i] = keep(offset + i) ? x[i] / (1 - p) : 0, with the Philox decision of kernels/dropout.h.
template <class T>
__global__ void dropout_kernel(T* x, int64_t n, DropoutSpec spec, float scale) {
  for (int64_t i = global_index(); i < n; i += grid_stride()) {
    const bool keep = dropout_keep(spec, spec.offset + static_cast<uint64_t>(i));
    x[i] = from_float<T>(keep ? to_float(x[i]) * scale : 0.0f);
  }
}

}  // namespace

void geglu_forward(const Tensor& u, Tensor& out) {
  check_cuda_tensor(u, "cuda geglu_forward input");
  check_operand(out, u.device(), u.dtype(), "cuda geglu_forward output");
  const int64_t rows = u.rows(), two_f = u.cols(), f = two_f / 2;
  GLMRT_CHECK(two_f % 2 == 0, "cuda geglu_forward: odd input width ", u.str());
  GLMRT_CHECK(out.rows() == rows && out.cols() == f, "cuda geglu_forward: output ", out.str(),
              " for input ", u.str());
  if (rows * f == 0) return;
  DeviceGuard guard(u.device());
  dispatch_float(u.dtype(), "geglu_forward", [&](auto zero) {
    using T = decltype(zero);
    geglu_kernel<T><<<grid_for(rows * f), kThreads>>>(static_cast<const T*>(u.data()),
                                                      static_cast<T*>(out.data()), rows, f);
    GLMRT_CUDA_CHECK_LAUNCH(geglu_kernel);
  });
}

void geglu_backward(const Tensor& u, const Tensor& dout, Tensor& du) {
  check_cuda_tensor(u, "cuda geglu_backward input");
  check_operand(dout, u.device(), u.dtype(), "cuda geglu_backward dout");
  check_operand(du, u.device(), u.dtype(), "cuda geglu_backward du");
  const int64_t rows = u.rows(), two_f = u.cols(), f = two_f / 2;
  GLMRT_CHECK(two_f % 2 == 0 && dout.rows() == rows && dout.cols() == f && du.shape() == u.shape(),
              "cuda geglu_backward: u ", u.str(), ", dout ", dout.str(), ", du ", du.str());
  if (rows * f == 0) return;
  DeviceGuard guard(u.device());
  dispatch_float(u.dtype(), "geglu_backward", [&](auto zero) {
    using T = decltype(zero);
    geglu_backward_kernel<T><<<grid_for(rows * f), kThreads>>>(static_cast<const T*>(u.data()),
                                                               static_cast<const T*>(dout.data()),
                                                               static_cast<T*>(du.data()), rows, f);
    GLMRT_CUDA_CHECK_LAUNCH(geglu_backward_kernel);
  });
}

void scale_inplace(Tensor& x, float s) {
  check_cuda_tensor(x, "cuda scale_inplace");
  const int64_t n = x.numel();
  if (n == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float(x.dtype(), "scale_inplace", [&](auto zero) {
    using T = decltype(zero);
    scale_kernel<T><<<grid_for(n), kThreads>>>(static_cast<T*>(x.data()), n, s);
    GLMRT_CUDA_CHECK_LAUNCH(scale_kernel);
  });
}

void scale_add(float alpha, const Tensor& a, const Tensor& b, Tensor& out) {
  check_cuda_tensor(a, "cuda scale_add a");
  check_operand(b, a.device(), a.dtype(), "cuda scale_add b");
  check_operand(out, a.device(), a.dtype(), "cuda scale_add out");
  GLMRT_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "cuda scale_add: ", a.str(), ", ",
              b.str(), " -> ", out.str());
  const int64_t n = a.numel();
  if (n == 0) return;
  DeviceGuard guard(a.device());
  dispatch_float(a.dtype(), "scale_add", [&](auto zero) {
    using T = decltype(zero);
    scale_add_kernel<T><<<grid_for(n), kThreads>>>(alpha, static_cast<const T*>(a.data()),
                                                   static_cast<const T*>(b.data()),
                                                   static_cast<T*>(out.data()), n);
    GLMRT_CUDA_CHECK_LAUNCH(scale_add_kernel);
  });
}

void convert(const Tensor& src, Tensor& dst) {
  check_cuda_tensor(src, "cuda convert source");
  check_cuda_tensor(dst, "cuda convert destination");
  GLMRT_CHECK(src.device() == dst.device(), "cuda convert: ", src.str(), " -> ", dst.str(),
              " crosses devices");
  GLMRT_CHECK(src.numel() == dst.numel(), "cuda convert: ", src.str(), " -> ", dst.str());
  const int64_t n = src.numel();
  if (n == 0) return;
  DeviceGuard guard(src.device());
  if (src.dtype() == dst.dtype()) {  // a plain copy (any dtype), ordered on the default stream
    if (src.data() != dst.data())
      GLMRT_CUDA_CHECK(
          cudaMemcpyAsync(dst.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  dispatch_float(src.dtype(), "convert (source)", [&](auto src_zero) {
    using Src = decltype(src_zero);
    dispatch_float(dst.dtype(), "convert (destination)", [&](auto dst_zero) {
      using Dst = decltype(dst_zero);
      convert_kernel<Src, Dst><<<grid_for(n), kThreads>>>(static_cast<const Src*>(src.data()),
                                                          static_cast<Dst*>(dst.data()), n);
      GLMRT_CUDA_CHECK_LAUNCH(convert_kernel);
    });
  });
}

void dropout_apply(Tensor& x, const DropoutSpec& spec) {
  check_cuda_tensor(x, "cuda dropout_apply");
  if (!spec.enabled()) return;
  GLMRT_CHECK(spec.p < 1.0f, "cuda dropout_apply: p must be < 1, got ", spec.p);
  const int64_t n = x.numel();
  if (n == 0) return;
  const float scale = 1.0f / (1.0f - spec.p);  // as the CPU op: one fp32 reciprocal, then x * it
  DeviceGuard guard(x.device());
  dispatch_float(x.dtype(), "dropout_apply", [&](auto zero) {
    using T = decltype(zero);
    dropout_kernel<T><<<grid_for(n), kThreads>>>(static_cast<T*>(x.data()), n, spec, scale);
    GLMRT_CUDA_CHECK_LAUNCH(dropout_kernel);
  });
}

}  // namespace glmrt::cuda
