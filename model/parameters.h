// The GLM parameters: their released names, shapes and shard rules (GLM130B.md §7), held in one
// contiguous allocation (llm.c style: one buffer for weights, one for gradients), with typed
// per-layer views for the model code. A rank holds the shard of its tensor-parallel rank and
// the layers of its pipeline stage (ModelShard); every parameter knows its full shape and how
// it is split, which is all that loading, resharding and ZeRO need.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/tensor.h"
#include "model/glm_config.h"
#include "parallel/topology.h"

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

// The part of the model one rank holds.
struct ModelShard {
  int tp_rank = 0, tp_size = 1;
  int64_t first_layer = 0, num_layers = -1;  // -1: every layer
  bool first_stage = true, last_stage = true;  // holds the embedding / the final LN and head

  static ModelShard whole() { return {}; }
  // The shard of the rank `topo` describes, its pipeline stage holding stage_layers[stage] layers
  // (stage_layer_counts).
  static ModelShard of_rank(const Topology& topo, const std::vector<int64_t>& stage_layers);
  int64_t layer_count(const GlmConfig& c) const { return num_layers < 0 ? c.num_layers : num_layers; }
  bool holds_embedding() const { return first_stage || last_stage; }
};

struct ParamSpec {
  std::string name;  // released name, e.g. transformer.layers.0.attention.dense.weight
  Shape shape;       // full (unsharded) shape
  ShardRule rule;
  bool weight_decay;  // false for biases and LayerNorm parameters
  Shape local_shape;  // the shape this rank holds
};

// Every parameter of the model in canonical order: embedding, layers 0..N-1, final LayerNorm.
std::vector<ParamSpec> glm_param_specs(const GlmConfig& config);
// The parameters `shard` holds, with their local shapes. Throws ConfigError when the config
// cannot be split tp_size ways (heads, ffn size, vocabulary).
std::vector<ParamSpec> glm_param_specs(const GlmConfig& config, const ModelShard& shard);

// The four linear weights of a layer (query_key_value, attention.dense, dense_h_to_4h,
// dense_4h_to_h), by released name: the weights weight-only quantization applies to.
bool is_linear_weight(const std::string& name);

// The shape of one of `size` shards of a tensor of shape `full` under `rule`.
Shape local_shape(const Shape& full, ShardRule rule, int size);
// The local piece of a full tensor under `rule` for tensor-parallel rank `rank` of `size`.
Tensor shard_tensor(const Tensor& full, ShardRule rule, int rank, int size);
// The inverse: the full tensor from the pieces of ranks 0..size-1 (host tensors).
Tensor unshard_tensor(const std::vector<Tensor>& pieces, ShardRule rule);
// Shard `rank` of `size` of a tensor saved as `saved` pieces under `rule`, asking `piece(k)` only
// for the saved pieces it overlaps: every rule splits into contiguous blocks (GluRows: of each
// half), so when one degree is a multiple of the other the shard is a slice of one saved piece or
// the join of consecutive ones (a replicated tensor: piece 0). Otherwise every piece is joined and
// re-split. Loading in the saved layout thus reads 1/size of each tensor per rank. The result
// owns its data (a copy, never a view of a piece).
Tensor reshard_pieces(const std::function<Tensor(int)>& piece, int saved, ShardRule rule, int rank, int size);

struct LayerParams {
  Tensor input_layernorm_weight, input_layernorm_bias;
  Tensor qkv_weight, qkv_bias;      // attention.query_key_value [3h, h] (head-interleaved)
  Tensor dense_weight, dense_bias;  // attention.dense [h, h]
  Tensor post_attention_layernorm_weight, post_attention_layernorm_bias;
  Tensor h_to_4h_weight, h_to_4h_bias;  // mlp.dense_h_to_4h [2F, h]
  Tensor fourh_to_h_weight, fourh_to_h_bias;  // mlp.dense_4h_to_h [h, F]
  // Weight-only quantization (checkpoint/quantize.h), when weight_bits is 4 or 8: the four
  // *_weight tensors above are I8 values ([rows, cols] or, for 4 bits, [rows, cols / 2]) and
  // these their F16 per-row scales; undefined otherwise.
  int weight_bits = 0;
  Tensor qkv_weight_scale, dense_weight_scale, h_to_4h_weight_scale, fourh_to_h_weight_scale;
};

class GlmParams {
 public:
  // One zeroed buffer holding every parameter `shard` holds. Its length is padded to a multiple
  // of `pad_multiple` elements (ZeRO partitions it evenly over data-parallel ranks).
  static GlmParams allocate(const GlmConfig& config, DType dtype, Device device,
                            const ModelShard& shard = ModelShard::whole(), int64_t pad_multiple = 1);
  // Elements of the flat buffer allocate() would make (parameters, alignment and padding).
  static int64_t flat_numel(const GlmConfig& config, const ModelShard& shard, int64_t pad_multiple = 1);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t size() const { return tensors_.size(); }
  Tensor& tensor(size_t i) { return tensors_[i]; }
  const Tensor& tensor(size_t i) const { return tensors_[i]; }
  int64_t offset(size_t i) const { return offsets_[i]; }  // element offset in flat(); -1: quantized
  // nullptr when this rank holds no parameter of that name.
  const Tensor* find(const std::string& name) const;
  const Tensor& flat() const { return flat_; }  // the single allocation
  Tensor& flat() { return flat_; }
  const ModelShard& shard() const { return shard_; }

  // Like allocate, for inference with weight-only quantization (checkpoint/quantize.h): the four
  // linear weights of every layer are not allocated at full precision; assign() quantizes each
  // as it is loaded, quantize(shard, released name) = (I8 values, F16 scales) on the parameters'
  // device, so no rank ever holds its full-precision linear weights (peak: one tensor). A
  // quantized GlmParams has no gradients and no ZeRO partition, and flat() holds only the other
  // parameters. bits: 4 or 8 (recorded in each LayerParams).
  using QuantizeFn = std::function<std::pair<Tensor, Tensor>(const Tensor&, const std::string&)>;
  static GlmParams allocate_quantized(const GlmConfig& config, DType dtype, Device device,
                                      const ModelShard& shard, int bits, QuantizeFn quantize);
  // Stores this rank's shard of parameter i (its local shape, any floating dtype and device):
  // converted to the parameters' dtype and device, or quantized (allocate_quantized).
  void assign(size_t i, const Tensor& src);
  // Stores parameter i already quantized (a pre-quantized checkpoint, `glmrt quantize`): host or
  // device I8 values of this rank's shard ([rows, cols] or [rows, cols / 2] for 4 bits) and F16
  // scales [rows], moved to the parameters' device. Only for a quantized GlmParams' linear weights.
  void assign_quantized(size_t i, const Tensor& values, const Tensor& scale);
  int weight_bits() const { return weight_bits_; }  // 0: not quantized
  // Bytes this rank's parameters occupy: the flat buffer plus any quantized values and scales.
  size_t nbytes() const;
  // The F16 scales of a quantized weight (by its released name); nullptr otherwise.
  const Tensor* find_scale(const std::string& name) const;

  Tensor word_embeddings;  // undefined on middle pipeline stages
  std::vector<LayerParams> layers;  // this stage's layers, in order
  Tensor final_layernorm_weight, final_layernorm_bias;  // last stage only

 private:
  ModelShard shard_;
  std::vector<ParamSpec> specs_;
  std::vector<Tensor> tensors_;
  std::vector<int64_t> offsets_;
  std::map<std::string, size_t> index_;
  std::vector<Tensor> scales_;  // per tensor: its quantization scales, or undefined
  Tensor flat_;
  int weight_bits_ = 0;
  QuantizeFn quantize_;
  static GlmParams allocate_impl(const GlmConfig& config, DType dtype, Device device,
                                 const ModelShard& shard, int64_t pad_multiple, int bits,
                                 QuantizeFn quantize);
  void bind_views(const GlmConfig& config);
  GlmConfig config_;
};

}  // namespace glmrt
