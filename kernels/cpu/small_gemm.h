// Linear layers on a few rows (token-by-token decoding): y[n, m] = x[n, k] · w[m, k]ᵀ + bias with
// n ≤ small_gemm_max_rows, run at the memory-bandwidth floor. Each weight is read exactly once per
// call, in its stored dtype (16-bit weights are widened in registers, never copied to F32; BF16
// on a CPU with the AVX-512 BF16 units goes through VDPBF16PS instead, whose products of two BF16
// values are exact in fp32 as the widened ones are, but which reads denormal inputs as zero and
// flushes denormal partial sums), by all cores (OpenMP over blocks of output columns = weight
// rows), and each loaded weight vector is used for every row of x. Computes and accumulates in
// fp32 and rounds y once, to nearest even.
//
// Every output element has one fixed summation order (8 fp32 lanes over k in steps of 8; on a CPU
// with AVX-512 16 lanes in steps of 16, with two accumulators over alternate steps for 16-bit
// weights; BF16 on a CPU with the AVX-512 BF16 units 16 lanes of VDPBF16PS over steps of 32, two
// accumulators; then a fixed horizontal sum, then + bias), whatever the thread count, the tile it
// falls in, n or m: on one CPU the results are bit-identical for any number of OpenMP threads and
// any batch.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace glmrt::cpu {

// The most rows of x that small_linear_forward takes; larger batches are BLAS's job.
inline constexpr int64_t small_gemm_max_rows = 32;

// Computes y = x·wᵀ + bias when it applies and returns true: CPU tensors, x, w and y all F32, all
// BF16 or all F16, w 2-D [m, k] with k > 0, x [.., k] with 1..small_gemm_max_rows rows, y [.., m]
// with as many rows, bias (optional) [m] in F32 or in y's dtype. Returns false, computing nothing,
// otherwise (the caller then takes its general path, which also reports malformed shapes).
// `allow_vectorized = false` takes the portable loop even where the AVX2 kernels run, and
// `allow_avx512 = false` the AVX2 kernels where the AVX-512 ones would, `allow_bf16_units = false`
// the widening AVX-512 kernels for BF16 where the BF16 units would (tests, benchmarks).
bool small_linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y,
                          bool allow_vectorized = true, bool allow_avx512 = true,
                          bool allow_bf16_units = true);

// True when the AVX2/FMA/F16C kernels run on this CPU (otherwise a portable scalar loop with the
// same blocking does).
bool small_gemm_vectorized();
// True when the AVX-512 kernels (F, BW, VL, DQ) run on this CPU.
bool small_gemm_avx512();
// True when BF16 calls take the AVX-512 BF16 units (VDPBF16PS) on this CPU.
bool small_gemm_bf16_units();

// Whether a block of this many bytes fits in the L1 data cache (32 KiB where the size is not
// known): a memory-bound decoding tile then prefetches its thread's next block of weight rows
// whole while it computes this one (see small_gemm.cpp).
bool fits_l1(int64_t block_bytes);

}  // namespace glmrt::cpu
