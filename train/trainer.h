// The single-rank training loop: micro-batches with gradient accumulation, the step loss
// (mean over micro-batches of Σ loss·mask / Σ mask), global-norm clipping, AdamW on fp32 master
// weights, the LR schedule and dynamic loss scaling (GLM130B.md §8).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/samples.h"
#include "model/glm_model.h"
#include "train/loss_scaler.h"
#include "train/train_config.h"

namespace glmrt {

struct StepMetrics {
  int64_t iteration = 0;
  double loss = 0, grad_norm = 0, lr = 0, loss_scale = 1;
  bool skipped = false;
  int64_t consumed_samples = 0, tokens = 0;
  double seconds = 0;
};

class Trainer {
 public:
  // `model` holds the compute weights (F32, or 16-bit for bf16/fp16); the trainer keeps fp32
  // master weights and Adam moments beside it.
  Trainer(GlmModel& model, const TrainConfig& train, const OptimizerConfig& optimizer,
          std::vector<Sample> samples);

  // Runs one optimizer step on the next global batch (cycling through the samples).
  StepMetrics step();

  const GlmParams& grads() const { return grads_; }
  const GlmParams& master() const { return master_is_model_ ? model_.params() : master_; }
  int64_t iteration() const { return iteration_; }

 private:
  GlmModel& model_;
  TrainConfig train_;
  OptimizerConfig opt_;
  std::vector<Sample> samples_;
  GlmParams grads_, master_, exp_avg_, exp_avg_sq_;
  bool master_is_model_;
  LossScaler scaler_;
  int64_t iteration_ = 0, updates_ = 0, next_sample_ = 0, consumed_ = 0;
};

}  // namespace glmrt
