// The CUDA backend as seen from host C++ (no CUDA headers needed to include this).
#pragma once

#include <cstddef>

#include "kernels/dropout.h"
#include "kernels/tensor.h"

namespace glmrt::cuda {
#include "kernels/op_signatures.inc"

// Number of visible GPUs; 0 when there is no driver or no device (never throws).
int device_count();
void set_device(int index);
void* device_malloc(size_t bytes, int device);
// Frees stream-ordered: after the work queued before it on `device` (-1: the current device).
void device_free(void* ptr, int device = -1);
// Copies between host and device memory (either side may be a device pointer).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void zero_bytes(void* ptr, size_t bytes, int device);
// Waits for all work on the current device; throws a CUDA error that names what failed.
void synchronize();
// Starts or stops the profiler's capture range (cudaProfilerStart / cudaProfilerStop): what
// `ncu --profile-from-start off` and `nsys --capture-range=cudaProfilerApi` record.
void profiler_range(bool start);

}  // namespace glmrt::cuda
