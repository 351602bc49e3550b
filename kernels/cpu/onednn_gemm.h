// BF16 GEMMs through oneDNN's matmul (AMX / AVX512-BF16 kernels where the CPU has them):
// bf16 operands, fp32 accumulation, output in c's dtype (BF16 or F32).
#pragma once

#include "kernels/tensor.h"

namespace glmrt::cpu {

// Computes c = alpha·op(a)·op(b) + beta·c with a, b BF16 and c BF16 or F32, when oneDNN has an
// optimised (non-reference) bf16 matmul for this CPU; returns false (computing nothing) when it
// has not. `allow_reference` accepts oneDNN's portable reference kernel too (tests only: slow).
bool onednn_bf16_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                      float alpha, float beta, bool allow_reference = false);

// The oneDNN implementation a bf16 matmul would use here (e.g. "brg:avx512_core_amx", "ref:any").
std::string onednn_bf16_matmul_impl();

}  // namespace glmrt::cpu
