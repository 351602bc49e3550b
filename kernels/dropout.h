// Dropout decided by Philox from (key, stream, element): the same element of the same step gets
// the same decision on any device and in any parallel layout, and the backward pass regenerates
// the mask instead of storing it.
#pragma once

#include <cstdint>

#include "kernels/philox.h"

namespace glmrt {

struct DropoutSpec {
  float p = 0.0f;        // drop probability; 0 disables
  uint64_t key = 0;      // the run's seed
  uint64_t stream = 0;   // what is being dropped: dropout_stream(step, layer, site)
  uint64_t offset = 0;   // hidden dropout: global element index of this call's element 0
  // Attention dropout (on the softmax probabilities): element (row b, head h, query i, key j) of
  // this call has global index ((b + row_offset) * total_heads + h + head_offset) * seq² + i * seq + j.
  int64_t row_offset = 0, head_offset = 0, total_heads = 0;

  bool enabled() const { return p > 0.0f; }
};

enum class DropoutSite : uint64_t { Embedding = 0, Attention = 1, AttentionOutput = 2, MlpOutput = 3 };

// The stream of one dropout site of one layer (layer = -1 for the embedding) in one optimizer step.
GLMRT_HD inline uint64_t dropout_stream(uint64_t step, int64_t layer, DropoutSite site) {
  return (step << 24) ^ (static_cast<uint64_t>(layer + 1) << 4) ^ static_cast<uint64_t>(site);
}

// True when global element `e` of the stream is kept (then scaled by 1 / (1 - p)).
GLMRT_HD inline bool dropout_keep(const DropoutSpec& d, uint64_t e) {
  uint32_t w[4];
  Philox::generate(d.key, d.stream, e >> 2, w);
  const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(d.p) * 4294967296.0);
  return w[e & 3] >= threshold;
}

}  // namespace glmrt
