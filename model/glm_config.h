// The model hyper-parameters (YAML section `model`) and the special token ids (section `tokens`).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "model/yaml_fields.h"

namespace glmrt {

struct TokenIds {
  int32_t mask = 150000, gmask = 150001, smask = 150002, eod = 150003, sop = 150004,
          eop = 150005, eos = 20002, pad = 0;
};

struct GlmConfig {
  int64_t num_layers = 70;
  int64_t hidden_size = 12288;
  int64_t num_attention_heads = 96;
  int64_t ffn_hidden_size = 32768;  // GeGLU inner size F; dense_h_to_4h has 2F rows
  int64_t vocab_size = 150528;
  int64_t max_sequence_length = 2048;
  double layernorm_epsilon = 1e-5;
  double rotary_base = 10000;
  bool rotary_fp16_tables = true;
  std::optional<double> deepnorm_alpha;  // nullopt = sqrt(2 * num_layers)
  TokenIds tokens;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  double alpha() const;
  // Throws ConfigError naming the offending key; `source` names the file.
  void validate(const std::string& source) const;
};

// Reads sections `model` (required) and `tokens` (optional; defaults are GLM-130B's ids).
GlmConfig parse_model_section(YamlFields& model, const std::string& source);
TokenIds parse_tokens_section(YamlFields& tokens);

}  // namespace glmrt
