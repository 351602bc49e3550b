// What one rank's training allocates, computed from the config and the layout alone (printed at
// start-up; a test holds the allocator to it within 5%).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "model/glm_config.h"
#include "model/parameters.h"
#include "parallel/topology.h"
#include "train/train_config.h"

namespace glmrt {

struct MemoryAccount {
  int64_t weights = 0;      // compute weights (the model's dtype)
  int64_t gradients = 0;    // fp32 gradient accumulation buffer
  int64_t optimizer = 0;    // fp32 master weights (unless the weights are fp32) and Adam moments
  int64_t activations = 0;  // micro-batches in flight under 1F1B (min(P − stage, M)) + work buffers
  int64_t work = 0;         // the part of `activations` that stays allocated between steps
  int64_t zero_staging = 0; // ZeRO-1: this rank's updated shard in the model's dtype, all-gathered
  // The peak: during the pipeline flush, or during the optimizer step (activations freed).
  int64_t total() const {
    return weights + gradients + optimizer + std::max(activations, work + zero_staging);
  }
};

// `shard` is the rank's part of the model, `stage` its pipeline stage.
MemoryAccount memory_account(const GlmConfig& config, const TrainConfig& train, const Layout& layout,
                             const ModelShard& shard, int stage, DType dtype, bool zero, int64_t seq);

std::string format_bytes(int64_t bytes);

}  // namespace glmrt
