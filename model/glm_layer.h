// One GLM-130B transformer layer (DeepNorm, GLM130B.md §2), forward and backward:
//   a = LN1(x);  x' = α·a + drop(Attn(a));  m = LN2(x');  out = α·m + drop(FFN(m))
#pragma once

#include "kernels/dropout.h"
#include "model/batch.h"
#include "parallel/communicator.h"
#include "model/glm_config.h"
#include "model/parameters.h"
#include "model/rope_tables.h"

namespace glmrt {

// Tensor parallelism as a layer sees it: its rank and a communicator for the conjugate
// all-reduces (row-parallel outputs in forward, column-parallel inputs in backward).
struct TensorParallel {
  Communicator* comm = nullptr;  // null: no tensor parallelism
  int rank = 0, size = 1;
  void all_reduce(Tensor& t, ReduceOp op = ReduceOp::Sum) const {
    if (comm && size > 1) comm->all_reduce(t, op);
  }
};

// Where a forward pass sits in training, for dropout: masks are keyed by (seed, step, layer,
// site, global element), so they do not depend on micro-batching or the parallel layout.
struct StepContext {
  bool training = false;  // dropout is applied only when training
  float hidden_dropout = 0.0f, attention_dropout = 0.0f;
  uint64_t seed = 0, step = 0;
  int64_t row_offset = 0;  // index of the batch's first row among all rows of the step

  // Hidden dropout on a [rows * seq, width] tensor of `layer` (-1 = embedding).
  DropoutSpec hidden(int64_t layer, DropoutSite site, int64_t seq, int64_t width) const;
  DropoutSpec attention(int64_t layer, int64_t total_heads, int64_t head_offset) const;
};

// The intermediate tensors of one layer's forward pass, [n = batch * seq, width] each.
// Kept by training for the backward pass; inference reuses one set as scratch space.
struct LayerActivations {
  Tensor input;                        // x (kept only when training)
  Tensor ln1_out, ln1_mean, ln1_rstd;  // a
  Tensor qkv;                          // after RoPE
  Tensor context, attn_lse;            // attention output before attention.dense; softmax lse
  Tensor attn_residual;                // x' = α·a + drop(attention.dense(context))
  Tensor ln2_out, ln2_mean, ln2_rstd;  // m
  Tensor h4h;                          // u = dense_h_to_4h(m), [n, 2F]
  Tensor geglu;                        // g = u[:, :F] ⊙ gelu(u[:, F:])

  // Allocates every tensor for `n` tokens of a tp_size-way shard (no-op when already so).
  void allocate(const GlmConfig& config, int tp_size, int64_t n, DType dtype, Device device);
};

// Inference against a KV cache: the layer's cache tensors and the step's indices
// (attention_cached_forward).
struct CachedAttention {
  const Tensor* token_index = nullptr;
  const Tensor* table = nullptr;
  Tensor* k_cache = nullptr;
  Tensor* v_cache = nullptr;
};

// x [n, h] is replaced by the layer's output; `act` receives the intermediates (and a copy of x
// when ctx.training). `layer_id` counts from 0. With `cached`, attention reads and extends the
// KV cache instead of using batch.mask_spans (inference only).
void glm_layer_forward(const GlmConfig& config, const LayerParams& p, const RopeTables& rope,
                       const TensorParallel& tp, const Batch& batch, int64_t layer_id,
                       const StepContext& ctx, LayerActivations& act, Tensor& x,
                       const CachedAttention* cached = nullptr);

// From dout (gradient of the layer output, [n, h]) computes dx (gradient of the layer input,
// may alias dout) and accumulates the parameter gradients into `grads`. `act` must hold the
// intermediates of the forward pass with the same ctx. `scratch` provides work buffers.
void glm_layer_backward(const GlmConfig& config, const LayerParams& p, const RopeTables& rope,
                        const TensorParallel& tp, const Batch& batch, int64_t layer_id,
                        const StepContext& ctx,
                        const LayerActivations& act, LayerActivations& scratch,
                        const Tensor& dout, Tensor& dx, LayerParams& grads);

}  // namespace glmrt
