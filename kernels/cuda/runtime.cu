// Device management and raw memory for the CUDA backend: counting and selecting GPUs,
// allocation, copies between host and device memory, zeroing, synchronisation.
// All work goes to the legacy default stream (kernels, cuBLAS, NCCL), so every op is ordered after
// the copies and frees before it.
//
// Memory comes from the device's stream-ordered pool (cudaMallocAsync / cudaFreeAsync on that
// stream), which keeps what is freed (release threshold: never) and hands it out again. Plain
// cudaMalloc / cudaFree cost a driver call each, and cudaFree waits for the whole device: with a
// tensor freed after nearly every op, a training step spent much of its time with the GPU idle.
// A freed block is reused only by work queued after the free, so no wait is needed. When the
// pool cannot grow, the blocks it holds are given back to the driver and the allocation retried.
// GLMRT_CUDA_MALLOC=plain in the environment switches back to cudaMalloc / cudaFree (for memory
// checkers, and to measure the difference).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include <cuda_profiler_api.h>

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

namespace {

// Whether `device` has a stream-ordered memory pool; on first use, sets its default pool to keep
// freed memory. Called with `device` current.
bool pooled(int device) {
  // Never destroyed: tensors may be freed while static objects are torn down at exit.
  static std::mutex* const mu = new std::mutex;
  static std::vector<int>* const state = new std::vector<int>;  // per device: 0 unknown,
  std::lock_guard<std::mutex> lock(*mu);                         // 1 pooled, 2 plain cudaMalloc
  if (device < 0) return false;
  if (static_cast<size_t>(device) >= state->size()) state->resize(static_cast<size_t>(device) + 1, 0);
  int& s = (*state)[static_cast<size_t>(device)];
  if (s == 0) {
    const char* mode = std::getenv("GLMRT_CUDA_MALLOC");
    int supported = 0;
    cudaMemPool_t pool = nullptr;
    uint64_t keep_everything = UINT64_MAX;
    if (!(mode && std::strcmp(mode, "plain") == 0) &&
        cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) == cudaSuccess &&
        supported && cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess &&
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything) == cudaSuccess) {
      s = 1;
    } else {
      cudaGetLastError();  // not sticky: clear it
      s = 2;
    }
  }
  return s == 1;
}

}  // namespace

void* device_malloc(size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  DeviceGuard guard(device);
  void* ptr = nullptr;
  cudaError_t status;
  if (pooled(device)) {
    status = cudaMallocAsync(&ptr, bytes, 0);
    if (status == cudaErrorMemoryAllocation) {  // give the pool's free blocks back, then retry
      cudaGetLastError();
      cudaMemPool_t pool = nullptr;
      GLMRT_CUDA_CHECK(cudaDeviceSynchronize());
      GLMRT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
      GLMRT_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
      status = cudaMallocAsync(&ptr, bytes, 0);
    }
  } else {
    status = cudaMalloc(&ptr, bytes);
  }
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // out of memory is not sticky: clear it, then report with the numbers
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw Error(::glmrt::detail::concat("out of GPU memory on cuda:", device, " allocating ", bytes,
                                        " bytes (", free_bytes, " of ", total_bytes,
                                        " bytes free)"));
  }
  if (status != cudaSuccess) cudaGetLastError();  // e.g. an impossible size: not sticky either
  GLMRT_CUDA_CHECK(status);
  return ptr;
}

void device_free(void* ptr, int device) {
  if (!ptr) return;
  // Called from Storage's deleter, i.e. from destructors: report instead of throwing. At process
  // exit the runtime may already be unloaded, in which case the memory is gone anyway.
  int current = -1;
  if (device < 0 && cudaGetDevice(&current) == cudaSuccess) device = current;
  cudaError_t status;
  if (pooled(device)) {
    // Queued on the device's legacy default stream, after all the work that uses the block.
    if (current < 0 && cudaGetDevice(&current) != cudaSuccess) current = device;
    if (current != device) cudaSetDevice(device);
    status = cudaFreeAsync(ptr, 0);
    if (current != device) cudaSetDevice(current);
  } else {
    status = cudaFree(ptr);
  }
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
  if (dst_device.index == src_device.index) {
    // Device to device: queued on the default stream like every op that reads or frees either
    // side later; the host never touches device memory, so there is nothing to wait for.
    DeviceGuard guard(dst_device);
    GLMRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
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

void profiler_range(bool start) {
  GLMRT_CUDA_CHECK(start ? cudaProfilerStart() : cudaProfilerStop());
}

}  // namespace glmrt::cuda
