#include "model/glm_config.h"

#include <cmath>

namespace glmrt {

double GlmConfig::alpha() const {
  return deepnorm_alpha ? *deepnorm_alpha : std::sqrt(2.0 * static_cast<double>(num_layers));
}

void GlmConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& key, const std::string& why) {
    throw ConfigError(source + ": model." + key + ": " + why);
  };
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) fail(key, "must be positive, got " + std::to_string(v));
  };
  positive("num_layers", num_layers);
  positive("hidden_size", hidden_size);
  positive("num_attention_heads", num_attention_heads);
  positive("ffn_hidden_size", ffn_hidden_size);
  positive("vocab_size", vocab_size);
  positive("max_sequence_length", max_sequence_length);
  if (hidden_size % num_attention_heads != 0)
    fail("num_attention_heads", std::to_string(num_attention_heads) +
                                    " heads do not divide hidden_size " +
                                    std::to_string(hidden_size));
  if (head_dim() % 2 != 0)
    fail("num_attention_heads", "head dim " + std::to_string(head_dim()) +
                                    " must be even for rotary embeddings");
  if (!(layernorm_epsilon > 0)) fail("layernorm_epsilon", "must be positive");
  if (!(rotary_base > 1)) fail("rotary_base", "must be greater than 1");
  if (rotary_fp16_tables && max_sequence_length > 2048)
    fail("rotary_fp16_tables", "fp16 angle tables represent positions exactly only up to 2048; "
                               "max_sequence_length is " + std::to_string(max_sequence_length));
  if (deepnorm_alpha && !(*deepnorm_alpha > 0)) fail("deepnorm_alpha", "must be positive or null");
  const std::pair<const char*, int32_t> ids[] = {
      {"MASK", tokens.mask}, {"gMASK", tokens.gmask}, {"sMASK", tokens.smask},
      {"eod", tokens.eod},   {"sop", tokens.sop},     {"eop", tokens.eop},
      {"eos", tokens.eos},   {"pad", tokens.pad}};
  for (const auto& [name, id] : ids)
    if (id < 0 || id >= vocab_size)
      throw ConfigError(source + ": tokens." + name + ": id " + std::to_string(id) +
                        " outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
}

GlmConfig parse_model_section(YamlFields& m, const std::string& source) {
  GlmConfig c;
  m.expect_keys({"num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size",
                 "max_sequence_length", "layernorm_epsilon", "rotary_base", "rotary_fp16_tables",
                 "deepnorm_alpha"});
  c.num_layers = m.required<int64_t>("num_layers");
  c.hidden_size = m.required<int64_t>("hidden_size");
  c.num_attention_heads = m.required<int64_t>("num_attention_heads");
  c.ffn_hidden_size = m.required<int64_t>("ffn_hidden_size");
  c.vocab_size = m.required<int64_t>("vocab_size");
  c.max_sequence_length = m.required<int64_t>("max_sequence_length");
  c.layernorm_epsilon = m.get<double>("layernorm_epsilon", c.layernorm_epsilon);
  c.rotary_base = m.get<double>("rotary_base", c.rotary_base);
  c.rotary_fp16_tables = m.get<bool>("rotary_fp16_tables", c.rotary_fp16_tables);
  c.deepnorm_alpha = m.nullable<double>("deepnorm_alpha");
  m.finish();
  return c;
}

TokenIds parse_tokens_section(YamlFields& t) {
  TokenIds ids;
  ids.mask = t.get<int32_t>("MASK", ids.mask);
  ids.gmask = t.get<int32_t>("gMASK", ids.gmask);
  ids.smask = t.get<int32_t>("sMASK", ids.smask);
  ids.eod = t.get<int32_t>("eod", ids.eod);
  ids.sop = t.get<int32_t>("sop", ids.sop);
  ids.eop = t.get<int32_t>("eop", ids.eop);
  ids.eos = t.get<int32_t>("eos", ids.eos);
  ids.pad = t.get<int32_t>("pad", ids.pad);
  t.finish();
  return ids;
}

}  // namespace glmrt
