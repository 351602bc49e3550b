// Weight-only quantized linear on the CPU (quantized_linear_forward, kernels/op_signatures.inc):
// y[n, m] = x[n, k] · (q[m, k] · scale[m])ᵀ + bias[m] with INT8 or packed INT4 weights q.
//
// A few rows (n ≤ small_gemm_max_rows, decoding) run at the memory-bandwidth floor: each stored
// weight byte is read once per call and widened in registers. Per output element
// y[i, j] = round(scale[j] · Σ_l x[i, l]·q[j, l] + bias[j]): the sum is one fixed fp32 order
// (8 lanes over the stored bytes in steps of 8 with fused multiply-adds, INT4 adding the byte's
// high-nibble column then its low-nibble column, then a fixed horizontal sum), then the scale,
// then the bias, then one rounding to y's dtype: bit-identical whatever the thread count, n, the
// tile a row falls in, or whether the AVX2 kernel or the portable loop runs.
// More rows (prefill) dequantize blocks of weight rows to F32 and multiply with BLAS sgemm
// (fp32 arithmetic in the BLAS order, the same scale / bias / rounding after).
#pragma once

#include "kernels/tensor.h"

namespace glmrt::cpu {

// quantized_linear_forward with a test hook: `allow_vectorized = false` takes the portable loop
// even where the AVX2 kernel runs (results are bit-identical).
void quantized_linear_forward_impl(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                                   const Tensor* bias, Tensor& y, bool allow_vectorized);

// True when the AVX2/FMA kernels run on this CPU.
bool quantized_linear_vectorized();

}  // namespace glmrt::cpu
