// The GLM blank-infilling sample builder (docs: GLM130B.md §4): turns a raw token window into one
// training sample of `seq_length` tokens, in the format the trainer consumes (data/samples.h).
//
// With probability gmask_prob, [gMASK] mode (one segment):
//   gen_len ~ Uniform{max(1, ⌊R/5⌋) .. R}, s = R - gen_len
//   tokens   = raw[:s] + [gMASK, sop] + raw[s:R-1]         then pad to seq_length
//   targets  = tokens shifted by one (the token after each position); the last real position
//              predicts raw[R-1]; padding predicts pad
//   loss     = 1 on the gen_len positions whose target is a generated token (sop .. end)
//   position = 0 .. seq_length-1 (padding included), sep = s + 1, one segment of seq_length
//   (padding sits in the causal part after every real token, so no real token sees it).
// Otherwise [MASK] mode: `segments` slots of seq_length/segments tokens, each its own segment
// (block-diagonal attention), slot c built from chunk c = raw[c·C, (c+1)·C), C = R / segments:
//   span lengths ~ Poisson(poisson_lambda) restricted to 1..max_span, drawn until they cover
//   ≥ ⌈mask_ratio·C⌉ tokens (at least 1); with probability single_span_prob instead one single
//   span of such a length (GLM-130B's collator: one Poisson-length span, so such a chunk may
//   mask < mask_ratio). Spans are placed uniformly at random, never overlapping or touching.
//   Part A = the chunk with each span replaced by one [MASK], positions 0..|A|-1, sep = |A|.
//   Part B = the spans in shuffled order, each [sop] + span with targets span + [eop]; every
//   Part-B token takes the position of its span's [MASK]. Loss 1 on Part B only. Part B is cut
//   where it would overflow the slot; the rest of the slot is padding (pad token, target pad,
//   position 0, loss 0). Part-A targets are the next token of the slot (no loss).
// Raw length R = ⌊seq_length · 2000 / 2048⌋ (2000 at 2048); in [MASK] mode the last
// R mod segments raw tokens are unused.
//
// A sample is a pure function of (seed, sample index, raw window): every random draw comes from
// Philox keyed by the seed (domain-separated from dropout/init) with the sample index as counter,
// so a resumed run or another thread rebuilds exactly the same sample.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/samples.h"
#include "model/glm_config.h"
#include "model/yaml_fields.h"

namespace glmrt {

struct GlmBuilderConfig {
  double gmask_prob = 0.7;         // [0, 1]
  double mask_ratio = 0.15;        // (0, 0.5]
  double poisson_lambda = 3.0;     // > 0
  double single_span_prob = 0.02;  // [0, 1]
  int64_t max_span = 39;           // ≥ 1
  int64_t segments = 4;            // ≥ 1; must divide seq_length
};

// Reads the `data.glm` section (all keys optional: gmask_prob, mask_ratio, poisson_lambda,
// max_span, single_span_prob, segments) and checks the ranges above. Throws ConfigError naming
// the key by its path ("cfg.yaml: data.glm.mask_ratio: ...").
GlmBuilderConfig parse_glm_builder_section(YamlFields& f);

struct BuiltSample {
  Sample sample;
  std::string mode;  // "gMASK" or "MASK"
};

class GlmSampleBuilder {
 public:
  // Throws ConfigError (naming data.glm.KEY) for out-of-range settings, a seq_length that
  // `segments` does not divide, or one too short to give each chunk a token.
  GlmSampleBuilder(const TokenIds& tokens, int64_t seq_length, GlmBuilderConfig config,
                   uint64_t seed);

  int64_t raw_length() const { return raw_length_; }      // R: raw tokens one sample consumes
  int64_t seq_length() const { return seq_length_; }
  int64_t slot_length() const { return slot_length_; }    // seq_length / segments
  int64_t chunk_length() const { return chunk_length_; }  // R / segments
  const GlmBuilderConfig& config() const { return config_; }

  // `raw` holds raw_length() tokens. Thread-safe (const, no shared state).
  BuiltSample build(const int32_t* raw, int64_t sample_index) const;
  // Same; throws InputError unless raw.size() == raw_length().
  BuiltSample build(std::span<const int32_t> raw, int64_t sample_index) const;

 private:
  void build_gmask(const int32_t* raw, uint64_t index, Sample& out) const;
  void build_mask(const int32_t* raw, uint64_t index, Sample& out) const;

  TokenIds tokens_;
  int64_t seq_length_, raw_length_, slot_length_, chunk_length_;
  GlmBuilderConfig config_;
  uint64_t key_;
  std::vector<double> span_cdf_;  // P(length ≤ k+1), k = 0..max_span-1, last entry 1
};

}  // namespace glmrt
