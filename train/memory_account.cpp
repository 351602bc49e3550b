#include "train/memory_account.h"

#include <algorithm>
#include <cstdio>

namespace glmrt {

namespace {
// Bytes of one LayerActivations set for n tokens (model/glm_layer.cpp allocate()).
int64_t layer_set_bytes(const GlmConfig& c, int tp, int64_t n, int64_t es) {
  const int64_t h = c.hidden_size, f = c.ffn_hidden_size / tp;
  const int64_t heads = c.num_attention_heads / tp, hl = heads * c.head_dim();
  const int64_t data = n * (h /*input*/ + h /*ln1*/ + 3 * hl + hl + h /*x'*/ + h /*ln2*/ + 2 * f + f);
  const int64_t stats = 4 * n + n * heads;  // means, rstds, lse (fp32)
  return data * es + stats * 4;
}
}  // namespace

MemoryAccount memory_account(const GlmConfig& c, const TrainConfig& t, const Layout& layout,
                             const ModelShard& shard, int stage, DType dtype, bool zero, int64_t seq) {
  MemoryAccount a;
  const int64_t es = static_cast<int64_t>(dtype_size(dtype));
  const int64_t pad = zero ? static_cast<int64_t>(layout.data) * 64 : 1;
  const int64_t flat = GlmParams::flat_numel(c, shard, pad), flat1 = GlmParams::flat_numel(c, shard, 1);
  a.weights = flat * es;
  a.gradients = flat * 4;
  if (zero) {
    const int64_t part = flat / layout.data;
    a.optimizer = 3 * part * 4 + (layout.data > 1 ? part * 4 : 0);  // master, m, v (+ reduced grads)
    a.zero_staging = part * es;
  } else {
    a.optimizer = 2 * flat1 * 4 + (dtype == DType::F32 ? 0 : flat1 * 4);
  }
  const int64_t n = t.micro_batch_size * seq, h = c.hidden_size, tp = layout.tensor;
  const int64_t micro_batches = t.global_batch_size / (t.micro_batch_size * layout.data);
  const int64_t in_flight = std::min<int64_t>(layout.pipeline - stage, micro_batches);
  const int64_t layers = shard.layer_count(c);
  int64_t per_mb = 20 * n;  // tokens, positions, mask spans (int32)
  per_mb += t.recompute ? layers * n * h * es : layers * layer_set_bytes(c, static_cast<int>(tp), n, es);
  if (shard.last_stage) {
    per_mb += 2 * n * h * es;                 // final LayerNorm input and output
    per_mb += n * (c.vocab_size / tp) * es;   // logits (reused as their gradient)
    per_mb += 4 * n * 4 + n * 4 + n * 4;      // statistics, targets, loss mask
  } else {
    per_mb += n * h * es;  // the activation sent to the next stage
  }
  a.work = layer_set_bytes(c, static_cast<int>(tp), n, es);  // backward work buffers
  if (t.recompute) a.work += layer_set_bytes(c, static_cast<int>(tp), n, es);  // recompute scratch
  a.work += 2 * c.max_sequence_length * (c.head_dim() / 2) * 4;  // RoPE tables
  a.activations = in_flight * per_mb + a.work;
  a.activations += 2 * n * h * es;  // the gradient flowing between layers, and dy of the head
  return a;
}

std::string format_bytes(int64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (b >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1 << 30));
  else if (b >= 1 << 20) std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1 << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024);
  return buf;
}

}  // namespace glmrt
