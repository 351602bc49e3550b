#include "model/parameters.h"

namespace glmrt {

const char* shard_rule_name(ShardRule rule) {
  switch (rule) {
    case ShardRule::Replicated: return "replicated";
    case ShardRule::Rows: return "rows";
    case ShardRule::Columns: return "columns";
    case ShardRule::GluRows: return "glu-rows";
    case ShardRule::VocabRows: return "vocab-rows";
  }
  return "?";
}

std::vector<ParamSpec> glm_param_specs(const GlmConfig& c) {
  const int64_t h = c.hidden_size, f = c.ffn_hidden_size;
  std::vector<ParamSpec> s;
  s.push_back({"transformer.word_embeddings.weight", {c.vocab_size, h}, ShardRule::VocabRows, true});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "transformer.layers." + std::to_string(i) + ".";
    s.push_back({p + "input_layernorm.weight", {h}, ShardRule::Replicated, false});
    s.push_back({p + "input_layernorm.bias", {h}, ShardRule::Replicated, false});
    s.push_back({p + "attention.query_key_value.weight", {3 * h, h}, ShardRule::Rows, true});
    s.push_back({p + "attention.query_key_value.bias", {3 * h}, ShardRule::Rows, false});
    s.push_back({p + "attention.dense.weight", {h, h}, ShardRule::Columns, true});
    s.push_back({p + "attention.dense.bias", {h}, ShardRule::Replicated, false});
    s.push_back({p + "post_attention_layernorm.weight", {h}, ShardRule::Replicated, false});
    s.push_back({p + "post_attention_layernorm.bias", {h}, ShardRule::Replicated, false});
    s.push_back({p + "mlp.dense_h_to_4h.weight", {2 * f, h}, ShardRule::GluRows, true});
    s.push_back({p + "mlp.dense_h_to_4h.bias", {2 * f}, ShardRule::GluRows, false});
    s.push_back({p + "mlp.dense_4h_to_h.weight", {h, f}, ShardRule::Columns, true});
    s.push_back({p + "mlp.dense_4h_to_h.bias", {h}, ShardRule::Replicated, false});
  }
  s.push_back({"transformer.final_layernorm.weight", {h}, ShardRule::Replicated, false});
  s.push_back({"transformer.final_layernorm.bias", {h}, ShardRule::Replicated, false});
  return s;
}

GlmParams GlmParams::allocate(const GlmConfig& config, DType dtype, Device device) {
  GlmParams p;
  p.specs_ = glm_param_specs(config);
  constexpr int64_t kAlign = 64;  // elements: every parameter starts 64-element aligned
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const ParamSpec& s : p.specs_) {
    offsets.push_back(total);
    total += (shape_numel(s.shape) + kAlign - 1) / kAlign * kAlign;
  }
  p.flat_ = Tensor::zeros({total}, dtype, device);
  for (size_t i = 0; i < p.specs_.size(); ++i) {
    const ParamSpec& s = p.specs_[i];
    p.tensors_.push_back(
        p.flat_.slice_rows(offsets[i], offsets[i] + shape_numel(s.shape)).view(s.shape));
    p.index_[s.name] = i;
  }
  size_t k = 0;
  p.word_embeddings = p.tensors_[k++];
  p.layers.resize(static_cast<size_t>(config.num_layers));
  for (LayerParams& l : p.layers) {
    for (Tensor* t : {&l.input_layernorm_weight, &l.input_layernorm_bias, &l.qkv_weight,
                      &l.qkv_bias, &l.dense_weight, &l.dense_bias,
                      &l.post_attention_layernorm_weight, &l.post_attention_layernorm_bias,
                      &l.h_to_4h_weight, &l.h_to_4h_bias, &l.fourh_to_h_weight,
                      &l.fourh_to_h_bias})
      *t = p.tensors_[k++];
  }
  p.final_layernorm_weight = p.tensors_[k++];
  p.final_layernorm_bias = p.tensors_[k++];
  return p;
}

const Tensor* GlmParams::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace glmrt
