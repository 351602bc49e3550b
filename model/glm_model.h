// The GLM forward pass: embedding, the layers, the final LayerNorm and the logits through the
// tied word embedding (GLM130B.md §2).
#pragma once

#include "model/batch.h"
#include "model/glm_config.h"
#include "model/glm_layer.h"
#include "model/parameters.h"
#include "model/rope_tables.h"

namespace glmrt {

class GlmModel {
 public:
  // Computes on the device and in the dtype of `params`.
  GlmModel(GlmConfig config, GlmParams params);

  const GlmConfig& config() const { return config_; }
  GlmParams& params() { return params_; }
  const GlmParams& params() const { return params_; }
  Device device() const { return params_.flat().device(); }
  DType dtype() const { return params_.flat().dtype(); }

  // Logits [batch, seq, vocab_size] (the params' dtype and device). The batch may be on any device.
  Tensor forward(const Batch& batch);

  // Training forward and backward of one micro-batch. Returns its loss Σ loss·mask / Σ mask
  // (fp32 cross-entropy of every token against `targets`, weighted by `loss_mask`) and
  // accumulates the gradient of grad_scale × that loss into `grads` (same config, any floating
  // dtype: fp32 gradient accumulation under 16-bit compute).
  struct TrainOptions {
    StepContext ctx;                     // dropout keys; ctx.training is forced on
    float embedding_grad_shrink = 1.0f;  // EGS α: gradient × α on both uses of the embedding
    float grad_scale = 1.0f;             // e.g. loss_scale / micro_batches
    bool recompute = false;              // keep only layer inputs; recompute in backward
  };
  double forward_backward(const Batch& batch, const Tensor& targets, const Tensor& loss_mask,
                          const TrainOptions& options, GlmParams& grads);

 private:
  GlmConfig config_;
  GlmParams params_;
  RopeTables rope_;          // on the params' device
  LayerActivations scratch_;  // reused by every layer in forward-only runs
  // Training: per-layer activations (or only inputs, with recompute) and backward work buffers.
  std::vector<LayerActivations> saved_;
  std::vector<Tensor> layer_inputs_;
  LayerActivations work_;
};

}  // namespace glmrt
