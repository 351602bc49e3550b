#include "model/parameters.h"

#include <algorithm>
#include <cstring>

namespace glmrt {

ModelShard ModelShard::of_rank(const Topology& topo, const std::vector<int64_t>& stage_layers) {
  ModelShard s;
  s.tp_rank = topo.tp_rank();
  s.tp_size = topo.layout().tensor;
  for (int stage = 0; stage < topo.pp_rank(); ++stage) s.first_layer += stage_layers[static_cast<size_t>(stage)];
  s.num_layers = stage_layers[static_cast<size_t>(topo.pp_rank())];
  s.first_stage = topo.is_first_stage();
  s.last_stage = topo.is_last_stage();
  return s;
}

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

namespace {
std::vector<ParamSpec> layer_specs(const GlmConfig& c, int64_t i) {
  const int64_t h = c.hidden_size, f = c.ffn_hidden_size;
  const std::string p = "transformer.layers." + std::to_string(i) + ".";
  return {
      {p + "input_layernorm.weight", {h}, ShardRule::Replicated, false, {}},
      {p + "input_layernorm.bias", {h}, ShardRule::Replicated, false, {}},
      {p + "attention.query_key_value.weight", {3 * h, h}, ShardRule::Rows, true, {}},
      {p + "attention.query_key_value.bias", {3 * h}, ShardRule::Rows, false, {}},
      {p + "attention.dense.weight", {h, h}, ShardRule::Columns, true, {}},
      {p + "attention.dense.bias", {h}, ShardRule::Replicated, false, {}},
      {p + "post_attention_layernorm.weight", {h}, ShardRule::Replicated, false, {}},
      {p + "post_attention_layernorm.bias", {h}, ShardRule::Replicated, false, {}},
      {p + "mlp.dense_h_to_4h.weight", {2 * f, h}, ShardRule::GluRows, true, {}},
      {p + "mlp.dense_h_to_4h.bias", {2 * f}, ShardRule::GluRows, false, {}},
      {p + "mlp.dense_4h_to_h.weight", {h, f}, ShardRule::Columns, true, {}},
      {p + "mlp.dense_4h_to_h.bias", {h}, ShardRule::Replicated, false, {}},
  };
}

}  // namespace

Shape local_shape(const Shape& full, ShardRule rule, int size) {
  Shape s = full;
  switch (rule) {
    case ShardRule::Replicated: break;
    case ShardRule::Rows:
    case ShardRule::GluRows:
    case ShardRule::VocabRows: s[0] /= size; break;
    case ShardRule::Columns: s[1] /= size; break;
  }
  return s;
}

std::vector<ParamSpec> glm_param_specs(const GlmConfig& c, const ModelShard& shard) {
  const int t = shard.tp_size;
  if (c.num_attention_heads % t != 0)
    throw ConfigError("tensor parallel " + std::to_string(t) + " does not divide " +
                      std::to_string(c.num_attention_heads) + " attention heads");
  if (c.ffn_hidden_size % t != 0)
    throw ConfigError("tensor parallel " + std::to_string(t) + " does not divide ffn_hidden_size " +
                      std::to_string(c.ffn_hidden_size));
  if (c.vocab_size % t != 0)
    throw ConfigError("tensor parallel " + std::to_string(t) + " does not divide vocab_size " +
                      std::to_string(c.vocab_size));
  const int64_t h = c.hidden_size, first = shard.first_layer, count = shard.layer_count(c);
  GLMRT_CHECK(first >= 0 && first + count <= c.num_layers, "shard layers [", first, ", ",
              first + count, ") of ", c.num_layers);
  std::vector<ParamSpec> s;
  if (shard.holds_embedding())
    s.push_back({"transformer.word_embeddings.weight", {c.vocab_size, h}, ShardRule::VocabRows, true, {}});
  for (int64_t i = first; i < first + count; ++i)
    for (ParamSpec& p : layer_specs(c, i)) s.push_back(std::move(p));
  if (shard.last_stage) {
    s.push_back({"transformer.final_layernorm.weight", {h}, ShardRule::Replicated, false, {}});
    s.push_back({"transformer.final_layernorm.bias", {h}, ShardRule::Replicated, false, {}});
  }
  for (ParamSpec& p : s) p.local_shape = local_shape(p.shape, p.rule, t);
  return s;
}

std::vector<ParamSpec> glm_param_specs(const GlmConfig& c) {
  return glm_param_specs(c, ModelShard::whole());
}

Tensor shard_tensor(const Tensor& full, ShardRule rule, int rank, int size) {
  GLMRT_CHECK(full.device().is_cpu(), "shard_tensor: host tensors only, got ", full.str());
  if (rule == ShardRule::Replicated || size == 1) return full.clone();
  const Shape local = local_shape(full.shape(), rule, size);
  Tensor out = Tensor::empty(local, full.dtype());
  const size_t es = dtype_size(full.dtype());
  const char* src = static_cast<const char*>(full.data());
  char* dst = static_cast<char*>(out.data());
  switch (rule) {
    case ShardRule::Rows:
    case ShardRule::VocabRows: {
      const size_t bytes = out.nbytes();
      std::memcpy(dst, src + bytes * static_cast<size_t>(rank), bytes);
      break;
    }
    case ShardRule::GluRows: {  // [V_r; W1_r]: chunk r of each half
      const size_t half = full.nbytes() / 2, piece = out.nbytes() / 2;
      std::memcpy(dst, src + piece * static_cast<size_t>(rank), piece);
      std::memcpy(dst + piece, src + half + piece * static_cast<size_t>(rank), piece);
      break;
    }
    case ShardRule::Columns: {
      const int64_t rows = full.dim(0), cols = full.dim(1), lc = local[1];
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(dst + static_cast<size_t>(r * lc) * es,
                    src + static_cast<size_t>(r * cols + rank * lc) * es, static_cast<size_t>(lc) * es);
      break;
    }
    case ShardRule::Replicated: break;
  }
  return out;
}

Tensor reshard_pieces(const std::function<Tensor(int)>& piece, int saved, ShardRule rule, int rank, int size) {
  if (rule == ShardRule::Replicated) return piece(0).clone();
  if (size % saved == 0) {
    const int split = size / saved;
    return shard_tensor(piece(rank / split), rule, rank % split, split);  // clones when split == 1
  }
  std::vector<Tensor> pieces;
  if (saved % size == 0) {
    const int join = saved / size;
    for (int k = rank * join; k < (rank + 1) * join; ++k) pieces.push_back(piece(k));
    return unshard_tensor(pieces, rule);
  }
  for (int k = 0; k < saved; ++k) pieces.push_back(piece(k));
  return shard_tensor(unshard_tensor(pieces, rule), rule, rank, size);
}

Tensor unshard_tensor(const std::vector<Tensor>& pieces, ShardRule rule) {
  GLMRT_CHECK(!pieces.empty(), "unshard_tensor: no pieces");
  const int size = static_cast<int>(pieces.size());
  if (rule == ShardRule::Replicated || size == 1) return pieces[0].clone();
  const Tensor& p0 = pieces[0];
  Shape full = p0.shape();
  if (rule == ShardRule::Columns) full[1] *= size;
  else full[0] *= size;
  Tensor out = Tensor::empty(full, p0.dtype());
  const size_t es = dtype_size(p0.dtype());
  char* dst = static_cast<char*>(out.data());
  for (int r = 0; r < size; ++r) {
    const Tensor& p = pieces[static_cast<size_t>(r)];
    GLMRT_CHECK(p.shape() == p0.shape() && p.dtype() == p0.dtype() && p.device().is_cpu(),
                "unshard_tensor: piece ", r, " is ", p.str(), ", piece 0 ", p0.str());
    const char* src = static_cast<const char*>(p.data());
    switch (rule) {
      case ShardRule::Rows:
      case ShardRule::VocabRows:
        std::memcpy(dst + p.nbytes() * static_cast<size_t>(r), src, p.nbytes());
        break;
      case ShardRule::GluRows: {
        const size_t piece = p.nbytes() / 2, half = out.nbytes() / 2;
        std::memcpy(dst + piece * static_cast<size_t>(r), src, piece);
        std::memcpy(dst + half + piece * static_cast<size_t>(r), src + piece, piece);
        break;
      }
      case ShardRule::Columns: {
        const int64_t rows = p.dim(0), lc = p.dim(1);
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(dst + static_cast<size_t>(i * lc * size + r * lc) * es,
                      src + static_cast<size_t>(i * lc) * es, static_cast<size_t>(lc) * es);
        break;
      }
      case ShardRule::Replicated: break;
    }
  }
  return out;
}

int64_t GlmParams::flat_numel(const GlmConfig& config, const ModelShard& shard, int64_t pad_multiple) {
  int64_t total = 0;
  for (const ParamSpec& s : glm_param_specs(config, shard)) total += (shape_numel(s.local_shape) + 63) / 64 * 64;
  return (total + pad_multiple - 1) / pad_multiple * pad_multiple;
}

bool is_linear_weight(const std::string& name) {
  for (const char* suffix : {".attention.query_key_value.weight", ".attention.dense.weight",
                             ".mlp.dense_h_to_4h.weight", ".mlp.dense_4h_to_h.weight"}) {
    const std::string s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
  }
  return false;
}

GlmParams GlmParams::allocate(const GlmConfig& config, DType dtype, Device device,
                              const ModelShard& shard, int64_t pad_multiple) {
  return allocate_impl(config, dtype, device, shard, pad_multiple, 0, nullptr);
}

GlmParams GlmParams::allocate_quantized(const GlmConfig& config, DType dtype, Device device,
                                        const ModelShard& shard, int bits, QuantizeFn quantize) {
  GLMRT_CHECK(bits == 4 || bits == 8, "GlmParams::allocate_quantized: bits must be 4 or 8, got ", bits);
  GLMRT_CHECK(quantize != nullptr, "GlmParams::allocate_quantized: no quantize function");
  return allocate_impl(config, dtype, device, shard, 1, bits, std::move(quantize));
}

GlmParams GlmParams::allocate_impl(const GlmConfig& config, DType dtype, Device device,
                                   const ModelShard& shard, int64_t pad_multiple, int bits,
                                   QuantizeFn quantize) {
  GlmParams p;
  p.shard_ = shard;
  p.specs_ = glm_param_specs(config, shard);
  p.weight_bits_ = bits;
  p.quantize_ = std::move(quantize);
  constexpr int64_t kAlign = 64;  // elements: every parameter starts 64-element aligned
  int64_t total = 0;
  for (const ParamSpec& s : p.specs_) {
    const bool quantized = bits && is_linear_weight(s.name);  // held outside the flat buffer
    p.offsets_.push_back(quantized ? -1 : total);
    if (!quantized) total += (shape_numel(s.local_shape) + kAlign - 1) / kAlign * kAlign;
  }
  total = (total + pad_multiple - 1) / pad_multiple * pad_multiple;
  p.flat_ = Tensor::zeros({std::max<int64_t>(total, 1)}, dtype, device);
  for (size_t i = 0; i < p.specs_.size(); ++i) {
    const ParamSpec& s = p.specs_[i];
    p.tensors_.push_back(p.offsets_[i] < 0 ? Tensor()
                                           : p.flat_.slice_rows(p.offsets_[i], p.offsets_[i] + shape_numel(s.local_shape))
                                                 .view(s.local_shape));
    p.index_[s.name] = i;
  }
  p.scales_.resize(p.tensors_.size());
  p.config_ = config;
  p.bind_views(config);
  return p;
}

void GlmParams::assign(size_t i, const Tensor& src) {
  const ParamSpec& spec = specs_.at(i);
  GLMRT_CHECK(src.shape() == spec.local_shape, "GlmParams::assign: ", spec.name, " is ",
              shape_str(spec.local_shape), " on this rank, got ", src.str());
  if (offsets_[i] >= 0) {
    tensors_[i].copy_from(src.dtype() == tensors_[i].dtype() ? src : src.to(tensors_[i].dtype()));
    return;
  }
  auto [values, scale] = quantize_(src, spec.name);
  tensors_[i] = std::move(values);
  scales_[i] = std::move(scale);
  bind_views(config_);
}

void GlmParams::assign_quantized(size_t i, const Tensor& values, const Tensor& scale) {
  const ParamSpec& spec = specs_.at(i);
  GLMRT_CHECK(offsets_[i] < 0, "GlmParams::assign_quantized: ", spec.name, " is not held quantized");
  const Shape want = {spec.local_shape[0], weight_bits_ == 4 ? spec.local_shape[1] / 2 : spec.local_shape[1]};
  GLMRT_CHECK(values.dtype() == DType::I8 && values.shape() == want, "GlmParams::assign_quantized: ",
              spec.name, " needs I8 ", shape_str(want), " on this rank, got ", values.str());
  GLMRT_CHECK(scale.dtype() == DType::F16 && scale.shape() == Shape{spec.local_shape[0]},
              "GlmParams::assign_quantized: ", spec.name, " needs F16 scales [",
              spec.local_shape[0], "], got ", scale.str());
  const Device device = flat_.device();
  tensors_[i] = values.device() == device ? values : values.to(device);
  scales_[i] = scale.device() == device ? scale : scale.to(device);
  bind_views(config_);
}

// The named views (word_embeddings, layers, final LayerNorm) onto tensors_ and scales_, in
// glm_param_specs order.
void GlmParams::bind_views(const GlmConfig& config) {
  size_t k = 0;
  if (shard_.holds_embedding()) word_embeddings = tensors_[k++];
  layers.assign(static_cast<size_t>(shard_.layer_count(config)), LayerParams{});
  for (LayerParams& l : layers) {
    for (Tensor* t : {&l.input_layernorm_weight, &l.input_layernorm_bias, &l.qkv_weight,
                      &l.qkv_bias, &l.dense_weight, &l.dense_bias,
                      &l.post_attention_layernorm_weight, &l.post_attention_layernorm_bias,
                      &l.h_to_4h_weight, &l.h_to_4h_bias, &l.fourh_to_h_weight,
                      &l.fourh_to_h_bias}) {
      if (t == &l.qkv_weight) l.qkv_weight_scale = scales_[k];
      if (t == &l.dense_weight) l.dense_weight_scale = scales_[k];
      if (t == &l.h_to_4h_weight) l.h_to_4h_weight_scale = scales_[k];
      if (t == &l.fourh_to_h_weight) l.fourh_to_h_weight_scale = scales_[k];
      *t = tensors_[k++];
    }
    l.weight_bits = weight_bits_;
  }
  if (shard_.last_stage) {
    final_layernorm_weight = tensors_[k++];
    final_layernorm_bias = tensors_[k++];
  }
}

size_t GlmParams::nbytes() const {
  size_t total = flat_.nbytes();
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (scales_[i].defined()) total += tensors_[i].nbytes() + scales_[i].nbytes();
  return total;
}

const Tensor* GlmParams::find_scale(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() || !scales_[it->second].defined() ? nullptr : &scales_[it->second];
}

const Tensor* GlmParams::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace glmrt
