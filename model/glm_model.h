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

 private:
  GlmConfig config_;
  GlmParams params_;
  RopeTables rope_;          // on the params' device
  LayerActivations scratch_;  // reused by every layer in forward-only runs
};

}  // namespace glmrt
