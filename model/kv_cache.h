// The KV cache of one pipeline stage: per local layer, keys (after RoPE) and values of every
// cached token, [slots, capacity, heads_local * head_dim] each, in the model's dtype. A sequence
// owns a slot; which slot holds key j of a cache row is the engine's table (op
// attention_cached_forward), so beams share their context's keys and reorder without copies.
#pragma once

#include <vector>

#include "kernels/tensor.h"
#include "model/glm_config.h"
#include "model/parameters.h"

namespace glmrt {

struct KvCache {
  std::vector<Tensor> k, v;  // one per layer of this stage
  int64_t slots = 0, capacity = 0;

  // Sized for `slots` sequences of up to `capacity` tokens on this rank's shard.
  static KvCache allocate(const GlmConfig& config, const ModelShard& shard, int64_t slots,
                          int64_t capacity, DType dtype, Device device);
  // Bytes that allocate() would take, for planning and error messages.
  static int64_t bytes_for(const GlmConfig& config, const ModelShard& shard, int64_t slots,
                           int64_t capacity, DType dtype);
};

// One step of cached inference as the model sees it (host or device tensors):
struct CachedBatch {
  Tensor tokens;        // I32 [n]
  Tensor position_ids;  // I32 [n]
  Tensor token_index;   // I32 [n, 3] {row, pos, visible} (attention_cached_forward)
  Tensor table;         // I32 [rows, capacity]
  Tensor logit_tokens;  // I32 [m]: the tokens whose logits are wanted (last stage)

  int64_t tokens_count() const { return tokens.numel(); }
  CachedBatch to(Device device) const;
};

}  // namespace glmrt
