// One GLM-130B transformer layer (DeepNorm, GLM130B.md §2):
//   a = LN1(x);  x' = α·a + Attn(a);  m = LN2(x');  out = α·m + FFN(m)
#pragma once

#include "model/batch.h"
#include "model/glm_config.h"
#include "model/parameters.h"
#include "model/rope_tables.h"

namespace glmrt {

// The intermediate tensors of one layer's forward pass, [n = batch * seq, width] each.
// Kept by training for the backward pass; inference reuses one set as scratch space.
struct LayerActivations {
  Tensor ln1_out, ln1_mean, ln1_rstd;  // a
  Tensor qkv;                          // after RoPE
  Tensor context, attn_lse;            // attention output before attention.dense; softmax lse
  Tensor attn_residual;                // x' = α·a + attention.dense(context)
  Tensor ln2_out, ln2_mean, ln2_rstd;  // m
  Tensor h4h;                          // u = dense_h_to_4h(m), [n, 2F]
  Tensor geglu;                        // g = u[:, :F] ⊙ gelu(u[:, F:])

  // Allocates every tensor for `n` tokens (no-op when already that size).
  void allocate(const GlmConfig& config, int64_t n, DType dtype, Device device);
};

// x [n, h] is replaced by the layer's output. `layer_id` counts from 0 (fp16 attention scaling).
void glm_layer_forward(const GlmConfig& config, const LayerParams& p, const RopeTables& rope,
                       const Batch& batch, int64_t layer_id, LayerActivations& act, Tensor& x);

}  // namespace glmrt
