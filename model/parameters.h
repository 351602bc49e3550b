// The GLM parameters: their released names, shapes and shard rules (GLM130B.md §7), held in one
// contiguous allocation (llm.c style: one buffer for weights, one for gradients), with typed
// per-layer views for the model code.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "model/glm_config.h"

namespace glmrt {

// How a parameter is split over tensor-parallel ranks.
enum class ShardRule {
  Replicated,  // LayerNorms, row-parallel biases
  Rows,        // column-parallel weights and biases (output rows; QKV keeps whole heads)
  Columns,     // row-parallel weights (input columns)
  GluRows,     // dense_h_to_4h: each shard holds its slice of both GeGLU halves
  VocabRows,   // word embeddings: contiguous vocabulary ranges
};
const char* shard_rule_name(ShardRule rule);

struct ParamSpec {
  std::string name;  // released name, e.g. transformer.layers.0.attention.dense.weight
  Shape shape;       // full (unsharded) shape
  ShardRule rule;
  bool weight_decay;  // false for biases and LayerNorm parameters
};

// Every parameter of the model in canonical order: embedding, layers 0..N-1, final LayerNorm.
std::vector<ParamSpec> glm_param_specs(const GlmConfig& config);

struct LayerParams {
  Tensor input_layernorm_weight, input_layernorm_bias;
  Tensor qkv_weight, qkv_bias;      // attention.query_key_value [3h, h] (head-interleaved)
  Tensor dense_weight, dense_bias;  // attention.dense [h, h]
  Tensor post_attention_layernorm_weight, post_attention_layernorm_bias;
  Tensor h_to_4h_weight, h_to_4h_bias;  // mlp.dense_h_to_4h [2F, h]
  Tensor fourh_to_h_weight, fourh_to_h_bias;  // mlp.dense_4h_to_h [h, F]
};

class GlmParams {
 public:
  // One zeroed buffer holding every parameter of `config`.
  static GlmParams allocate(const GlmConfig& config, DType dtype, Device device);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t size() const { return tensors_.size(); }
  Tensor& tensor(size_t i) { return tensors_[i]; }
  const Tensor& tensor(size_t i) const { return tensors_[i]; }
  // nullptr when the model has no parameter of that name.
  const Tensor* find(const std::string& name) const;
  const Tensor& flat() const { return flat_; }  // the single allocation
  Tensor& flat() { return flat_; }

  Tensor word_embeddings;
  std::vector<LayerParams> layers;
  Tensor final_layernorm_weight, final_layernorm_bias;

 private:
  std::vector<ParamSpec> specs_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> index_;
  Tensor flat_;
};

}  // namespace glmrt
