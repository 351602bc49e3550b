// What a generation query asks for and what it gets back (GLM130B.md §5). Shared by the engine,
// `glmrt generate`, `glmrt serve` and the HTTP layer.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/glm_config.h"

namespace glmrt {

enum class Strategy { Greedy, Sample, Beam };
const char* strategy_name(Strategy s);
// "greedy", "sample" or "beam" (also the released names "BaseStrategy" = sample and
// "BeamSearchStrategy" = beam); throws InputError naming `what` otherwise.
Strategy parse_strategy(const std::string& name, const std::string& what = "strategy");

// The knobs of the released CLI, with its defaults.
struct GenerationParams {
  Strategy strategy = Strategy::Sample;
  int64_t out_seq_length = 256;  // per blank: its context (with sop) + generated tokens <= this
  int64_t min_gen_length = 0;    // end tokens are banned until this many tokens are generated
  // sampling (greedy = top_k 1)
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 0.7;
  uint64_t seed = 1234;
  // OpenAI's penalties (greedy and sampling): before the temperature, the logit of every token
  // already generated in the blank is lowered by presence_penalty + frequency_penalty · its count.
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  // OpenAI's logit_bias (greedy and sampling): (token, bias in [-100, 100]) pairs, each bias added
  // to its token's logit with the penalties, before the temperature and the end-token ban (-100
  // all but bans a token, +100 all but forces it). Distinct tokens, at most kMaxLogitBias.
  std::vector<std::pair<int32_t, double>> logit_bias;
  // OpenAI's logprobs (greedy and sampling): -1 = off; 0..kMaxLogprobs = report, for every
  // generated token, its log-probability and the `logprobs` most likely tokens with theirs. These
  // are the model's: log-softmax of the logits before penalties, bans, temperature, top-k and top-p.
  int64_t logprobs = -1;
  // beam search
  int64_t num_beams = 4;
  double length_penalty = 1.0;
  int64_t no_repeat_ngram_size = 3;
  bool deterministic = false;  // top-k of the beam candidates instead of sampling them
};

// The most alternatives a query may ask `logprobs` for (OpenAI's limit for completions).
inline constexpr int64_t kMaxLogprobs = 5;
// The most tokens one query may bias.
inline constexpr size_t kMaxLogitBias = 1024;

// Throws InputError naming the field when a value is out of range (temperature <= 0, top_p not
// in [0, 1], num_beams < 1, out_seq_length < 2, ...). `where` prefixes the message.
void validate_params(const GenerationParams& p, const std::string& where);

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;  // the prompt as token ids (mask tokens included)
  GenerationParams params;
};

// One generated token with its log-probability and the most likely tokens at its position
// (highest first, ties by the lower id), for a query with logprobs >= 0.
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

struct GenerationResult {
  std::vector<int32_t> output_ids;          // the prompt with every blank filled (no stop token,
                                            // no eos appended to the context)
  std::vector<std::vector<int32_t>> spans;  // the generated span of each blank, in order
  int64_t generated_tokens = 0;             // tokens generated over all blanks (beam: best beam)
  std::string finish_reason;                // "stop" (eop/eos) or "length" (last blank)
  std::vector<TokenLogprobs> logprobs;      // logprobs >= 0: one per token of `spans`, in order
  std::string error;                        // non-empty: the query failed (nothing else is set)
};

}  // namespace glmrt
