// Every op, dispatched on the device of its tensors to kernels/cpu or kernels/cuda.
// Signatures and semantics: kernels/op_signatures.inc.
#pragma once

#include "kernels/dropout.h"
#include "kernels/tensor.h"

namespace glmrt {
#include "kernels/op_signatures.inc"

namespace cpu {
#include "kernels/op_signatures.inc"
}  // namespace cpu

// Whether this build has the CUDA backend, and how many GPUs the process sees (0 without).
bool cuda_built();
int cuda_device_count();
// Makes GPU `index` current for this process (no-op without CUDA).
void cuda_set_device(int index);
// Starts (true) or stops (false) the CUDA profiler's capture range (no-op without CUDA).
void cuda_profiler_range(bool start);

}  // namespace glmrt
