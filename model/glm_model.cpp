#include "model/glm_model.h"

#include "kernels/ops.h"

namespace glmrt {

GlmModel::GlmModel(GlmConfig config, GlmParams params)
    : config_(std::move(config)), params_(std::move(params)) {
  RopeTables host = build_rope_tables(config_.head_dim(), config_.max_sequence_length,
                                      config_.rotary_base, config_.rotary_fp16_tables);
  rope_ = {host.cos.to(device()), host.sin.to(device())};
}

Tensor GlmModel::forward(const Batch& host_batch) {
  const Batch batch = host_batch.tokens.device() == device() ? host_batch : host_batch.to(device());
  const int64_t n = batch.batch * batch.seq, h = config_.hidden_size;
  Tensor x = Tensor::empty({n, h}, dtype(), device());
  embedding_forward(batch.tokens, params_.word_embeddings, 0, x);
  scratch_.allocate(config_, n, dtype(), device());
  for (int64_t i = 0; i < config_.num_layers; ++i)
    glm_layer_forward(config_, params_.layers[static_cast<size_t>(i)], rope_, batch, i, scratch_, x);
  Tensor y = Tensor::empty({n, h}, dtype(), device());
  layernorm_forward(x, params_.final_layernorm_weight, params_.final_layernorm_bias,
                    static_cast<float>(config_.layernorm_epsilon), y, nullptr, nullptr);
  Tensor logits = Tensor::empty({batch.batch, batch.seq, config_.vocab_size}, dtype(), device());
  linear_forward(y, params_.word_embeddings, nullptr, logits);  // tied output head, no bias
  return logits;
}

}  // namespace glmrt
