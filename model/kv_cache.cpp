#include "model/kv_cache.h"

namespace glmrt {

namespace {
int64_t local_width(const GlmConfig& c, const ModelShard& s) {
  return c.num_attention_heads / s.tp_size * c.head_dim();
}
}  // namespace

KvCache KvCache::allocate(const GlmConfig& config, const ModelShard& shard, int64_t slots,
                          int64_t capacity, DType dtype, Device device) {
  GLMRT_CHECK(slots > 0 && capacity > 0, "KvCache: ", slots, " slots of ", capacity, " tokens");
  KvCache c;
  c.slots = slots;
  c.capacity = capacity;
  const int64_t width = local_width(config, shard);
  for (int64_t i = 0; i < shard.layer_count(config); ++i) {
    c.k.push_back(Tensor::empty({slots, capacity, width}, dtype, device));
    c.v.push_back(Tensor::empty({slots, capacity, width}, dtype, device));
  }
  return c;
}

int64_t KvCache::bytes_for(const GlmConfig& config, const ModelShard& shard, int64_t slots,
                           int64_t capacity, DType dtype) {
  return 2 * shard.layer_count(config) * slots * capacity * local_width(config, shard) *
         static_cast<int64_t>(dtype_size(dtype));
}

CachedBatch CachedBatch::to(Device device) const {
  auto move = [&](const Tensor& t) { return t.defined() ? t.to(device) : Tensor(); };
  return {move(tokens), move(position_ids), move(token_index), move(table), move(logit_tokens)};
}

}  // namespace glmrt
