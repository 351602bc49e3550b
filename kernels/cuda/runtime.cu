// Device management and raw memory for the CUDA backend: counting and selecting GPUs,
// allocation, copies between host and device memory, zeroing, synchronisation.
// All work goes to the legacy default stream, so every op is ordered after the copies before it.
#include <cstdio>
#include <cstring>

#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

int device_count() {
  try {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      // cudaErrorNoDevice, cudaErrorInsufficientDriver, a missing libcuda...: no usable GPU.
      // Clear the error so that it does not surface from a later, unrelated call.
      cudaGetLastError();
      return 0;
    }
    return count;
  } catch (...) {  // the runtime does not throw, but this function promises never to
    return 0;
  }
}

void set_device(int index) {
  const int count = device_count();
  GLMRT_CHECK(index >= 0 && index < count, "cuda set_device: device ", index, " requested, ", count,
              " visible");
  GLMRT_CUDA_CHECK(cudaSetDevice(index));
}

void* device_malloc(size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  DeviceGuard guard(device);
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, bytes);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // out of memory is not sticky: clear it, then report with the numbers
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw Error(::glmrt::detail::concat("out of GPU memory on cuda:", device, " allocating ", bytes,
                                        " bytes (", free_bytes, " of ", total_bytes,
                                        " bytes free)"));
  }
  GLMRT_CUDA_CHECK(status);
  return ptr;
}

void device_free(void* ptr) {
  if (!ptr) return;
  // Called from Storage's deleter, i.e. from destructors: report instead of throwing. At process
  // exit the runtime may already be unloaded, in which case the memory is gone anyway.
  const cudaError_t status = cudaFree(ptr);
  if (status != cudaSuccess && status != cudaErrorCudartUnloading) {
    std::fprintf(stderr, "glmrt: cudaFree(%p) failed: %s: %s\n", ptr, cudaGetErrorName(status),
                 cudaGetErrorString(status));
  }
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  GLMRT_CHECK(dst && src, "cuda copy_bytes: null pointer for ", bytes, " bytes");
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memmove(dst, src, bytes);
    return;
  }
  if (dst_device.is_cpu()) {  // device to host: cudaMemcpy returns once the data has arrived
    DeviceGuard guard(src_device);
    GLMRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return;
  }
  if (src_device.is_cpu()) {
    // Host to device: from pageable memory cudaMemcpy may return before the DMA has landed;
    // synchronise so the copy is complete (and the source reusable) when we return.
    DeviceGuard guard(dst_device);
    GLMRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    GLMRT_CUDA_CHECK(cudaStreamSynchronize(0));
    return;
  }
  if (dst_device.index == src_device.index) {  // device to device: asynchronous, so wait
    DeviceGuard guard(dst_device);
    GLMRT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    GLMRT_CUDA_CHECK(cudaStreamSynchronize(0));
    return;
  }
  // Between two GPUs (through host memory when peer access is off); wait on both sides.
  {
    DeviceGuard guard(dst_device);
    GLMRT_CUDA_CHECK(cudaMemcpyPeer(dst, dst_device.index, src, src_device.index, bytes));
    GLMRT_CUDA_CHECK(cudaStreamSynchronize(0));
  }
  DeviceGuard guard(src_device);
  GLMRT_CUDA_CHECK(cudaStreamSynchronize(0));
}

void zero_bytes(void* ptr, size_t bytes, int device) {
  if (bytes == 0) return;
  GLMRT_CHECK(ptr, "cuda zero_bytes: null pointer for ", bytes, " bytes");
  DeviceGuard guard(device);
  // Ordered on the default stream before every later op; no need to wait for it here.
  GLMRT_CUDA_CHECK(cudaMemset(ptr, 0, bytes));
}

void synchronize() {
  GLMRT_CUDA_CHECK(cudaDeviceSynchronize());
  GLMRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace glmrt::cuda
