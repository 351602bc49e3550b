// Weight-only quantized linear on the CPU (quantized_linear_forward, kernels/op_signatures.inc):
// y[n, m] = x[n, k] · (q[m, k] · scale[m])ᵀ + bias[m] with INT8 or packed INT4 weights q.
//
// A few rows (n ≤ small_gemm_max_rows, decoding) run at the memory-bandwidth floor: each stored
// weight byte is read once per call and widened in registers. Per output element
// y[i, j] = round(scale[j] · Σ_l x[i, l]·q[j, l] + bias[j]): the sum is one fixed fp32 order
// (8 lanes over the stored bytes in steps of 8 with fused multiply-adds, INT4 adding the byte's
// high-nibble column then its low-nibble column, then a fixed horizontal sum; on CPUs with
// AVX-512, 16 lanes in steps of 16, lanes t and t + 8 added before that sum), then the scale,
// then the bias, then one rounding to y's dtype: bit-identical on a given CPU whatever the
// thread count, n, the tile a row falls in, or whether a vector kernel or the portable loop runs.
// More rows (prefill) dequantize blocks of weight rows to F32 and multiply with BLAS sgemm
// (fp32 arithmetic in the BLAS order, the same scale / bias / rounding after).
#pragma once

#include "kernels/tensor.h"

namespace glmrt::cpu {

// quantized_linear_forward with test hooks: `allow_vectorized = false` takes the portable loop
// even where a vector kernel runs (results are bit-identical); `allow_avx512 = false` keeps the
// 8-lane order (the AVX2 kernel, or the portable loop in its order) on a CPU with AVX-512.
void quantized_linear_forward_impl(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                                   const Tensor* bias, Tensor& y, bool allow_vectorized,
                                   bool allow_avx512 = true);

// True when the AVX2/FMA kernels run on this CPU.
bool quantized_linear_vectorized();

// True when the AVX-512 kernels (16 lanes, their own fixed order) run on this CPU.
bool quantized_linear_avx512();

}  // namespace glmrt::cpu
