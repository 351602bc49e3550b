// Shared helpers of the CUDA kernels: error checking, device selection, dtype dispatch, fp32
// load/store of the storage types, warp and block reductions, launch sizes, argument checks.
// Included by kernels/cuda/*.cu only (it needs the CUDA headers).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_ops.h"

namespace glmrt::cuda {
namespace detail {

// Throw glmrt::Error naming the failed call, its location and CUDA's description of the error.
[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                          int line) {
  throw Error(::glmrt::detail::concat("CUDA error: `", call, "` failed at ", file, ":", line, ": ",
                                      cudaGetErrorName(status), ": ", cudaGetErrorString(status)));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call,
                                            const char* file, int line) {
  throw Error(::glmrt::detail::concat("cuBLAS error: `", call, "` failed at ", file, ":", line,
                                      ": ", cublasGetStatusName(status), ": ",
                                      cublasGetStatusString(status)));
}

}  // namespace detail
}  // namespace glmrt::cuda

// GLMRT_CUDA_CHECK(call): evaluates a CUDA runtime call and throws glmrt::Error unless it
// succeeded.
#define GLMRT_CUDA_CHECK(call)                                                           \
  do {                                                                                   \
    const cudaError_t glmrt_status_ = (call);                                            \
    if (glmrt_status_ != cudaSuccess)                                                    \
      ::glmrt::cuda::detail::throw_cuda_error(glmrt_status_, #call, __FILE__, __LINE__); \
  } while (0)

// GLMRT_CUBLAS_CHECK(call): the same for cuBLAS calls.
#define GLMRT_CUBLAS_CHECK(call)                                                           \
  do {                                                                                     \
    const cublasStatus_t glmrt_status_ = (call);                                           \
    if (glmrt_status_ != CUBLAS_STATUS_SUCCESS)                                            \
      ::glmrt::cuda::detail::throw_cublas_error(glmrt_status_, #call, __FILE__, __LINE__); \
  } while (0)

// GLMRT_CUDA_CHECK_LAUNCH(kernel name): right after `kernel<<<...>>>(...)`, throws if the launch
// failed (bad configuration, no kernel image for this GPU, a sticky error from earlier work).
#define GLMRT_CUDA_CHECK_LAUNCH(...)                                                              \
  do {                                                                                            \
    const cudaError_t glmrt_status_ = cudaGetLastError();                                         \
    if (glmrt_status_ != cudaSuccess)                                                             \
      ::glmrt::cuda::detail::throw_cuda_error(glmrt_status_, "launch of " #__VA_ARGS__, __FILE__, \
                                              __LINE__);                                          \
  } while (0)

namespace glmrt::cuda {

// Makes `device` current for the lifetime of the guard and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    GLMRT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) GLMRT_CUDA_CHECK(cudaSetDevice(device));
  }
  explicit DeviceGuard(Device device) : DeviceGuard(device.index) {}
  ~DeviceGuard() {
    int current = previous_;
    // Restoring cannot throw from a destructor; a failure here would already have been reported.
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// ---- Storage types ------------------------------------------------------------------------

// Calls fn(T{}) with T = float, __half or __nv_bfloat16 according to `dtype`; throws for others.
template <class Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::F32:
      fn(float{});
      return;
    case DType::F16:
      fn(__half{});
      return;
    case DType::BF16:
      fn(__nv_bfloat16{});
      return;
    default:
      throw InternalError(::glmrt::detail::concat("cuda ", op, ": unsupported dtype ",
                                                  dtype_name(dtype),
                                                  " (the CUDA backend stores F32, F16 or BF16)"));
  }
}

// Calls fn(T{}, G{}) for data of `data` dtype T and gradients of `grad` dtype G, which is either
// T or float ("parameter gradients may be F32 while the data is F16/BF16").
template <class Fn>
void dispatch_data_grad(DType data, DType grad, const char* op, Fn&& fn) {
  dispatch_float(data, op, [&](auto zero) {
    if (grad == DType::F32)
      fn(zero, float{});
    else if (grad == data)
      fn(zero, zero);
    else
      throw InternalError(::glmrt::detail::concat("cuda ", op, ": gradient dtype ",
                                                  dtype_name(grad), " for ", dtype_name(data),
                                                  " data (expected it or F32)"));
  });
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round-to-nearest-even conversion from fp32 to the storage type T.
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ---- Reductions ---------------------------------------------------------------------------

constexpr unsigned kFullMask = 0xffffffffu;

// Sum over the 32 lanes of a warp; every lane receives the same (bitwise identical) result,
// because each butterfly step adds the same two values in both partner lanes.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every thread receives the
// result. `scratch` is __shared__ float[32]; the call ends with a barrier so it may be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  v = warp_sum(v);  // every warp sums the same partials in the same order
  __syncthreads();
  return v;
}

// Maximum over a block, like block_sum (NaN-ignoring fmaxf; -inf for an empty block).
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  __syncthreads();
  return v;
}

// ---- Launch sizes -------------------------------------------------------------------------

constexpr int kThreads = 256;

// Threads for a block that reduces one row of `cols` elements: narrow rows get fewer threads so
// that no warp idles, wide rows 256.
inline int threads_for_row(int64_t cols) {
  return cols >= 1024 ? 256 : cols >= 256 ? 128 : cols >= 64 ? 64 : 32;
}

// Blocks for a grid-stride loop over `n` items: enough to fill any current GPU, capped so the
// grid size stays a comfortable int.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

// ---- Scratch memory -----------------------------------------------------------------------

// Temporary device memory for one op on the current device, from the same stream-ordered pool
// as every tensor (device_malloc / device_free in runtime.cu): allocation and release are ordered
// on the default stream and never synchronise the host.
class DeviceScratch {
 public:
  explicit DeviceScratch(size_t bytes) {
    if (!bytes) return;
    GLMRT_CUDA_CHECK(cudaGetDevice(&device_));
    ptr_ = device_malloc(bytes, device_);
  }
  ~DeviceScratch() { device_free(ptr_, device_); }  // reports instead of throwing
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  int device_ = 0;
};

// ---- Argument checks ----------------------------------------------------------------------

// Throws InternalError unless `t` is defined and lives on a CUDA device.
inline void check_cuda_tensor(const Tensor& t, const char* what) {
  GLMRT_CHECK(t.defined(), what, ": tensor is undefined");
  GLMRT_CHECK(t.device().is_cuda(), what, ": expected a CUDA tensor, got ", t.str());
}

// Throws InternalError unless `t` is a CUDA tensor on `device` holding `dtype`.
inline void check_operand(const Tensor& t, Device device, DType dtype, const char* what) {
  check_cuda_tensor(t, what);
  GLMRT_CHECK(t.device() == device, what, ": ", t.str(), " is not on ", device.str());
  GLMRT_CHECK(t.dtype() == dtype, what, ": expected ", dtype_name(dtype), ", got ", t.str());
}

// Throws InternalError unless `grad` is a CUDA tensor on `device` holding `data` or F32.
inline void check_grad_operand(const Tensor& grad, Device device, DType data, const char* what) {
  check_cuda_tensor(grad, what);
  GLMRT_CHECK(grad.device() == device, what, ": ", grad.str(), " is not on ", device.str());
  GLMRT_CHECK(grad.dtype() == data || grad.dtype() == DType::F32, what, ": expected ",
              dtype_name(data), " or F32, got ", grad.str());
}

}  // namespace glmrt::cuda
