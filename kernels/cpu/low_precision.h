// F16 / BF16 storage on the CPU: each op runs its fp32 kernel on fp32 copies of its 16-bit
// tensors and rounds the results back to 16 bits, so values are rounded at op boundaries exactly
// as a 16-bit-storage, fp32-compute GPU kernel rounds them (overflow to inf included). This is
// what lets mixed-precision training (bf16, fp16 with loss scaling) run and be tested on CPUs.
// Parameter gradients kept in F32 (fp32 accumulation) are used as they are.
#pragma once

#include "kernels/dropout.h"
#include "kernels/tensor.h"

namespace glmrt::cpu_low_precision {
#include "kernels/op_signatures.inc"
}  // namespace glmrt::cpu_low_precision

namespace glmrt {
// True when any of the tensors is F16 or BF16.
bool any_low_precision(std::initializer_list<const Tensor*> tensors);
}  // namespace glmrt
