#include "inference/generation.h"

#include <cmath>
#include <set>
#include <string>
#include <utility>

#include "kernels/error.h"

namespace glmrt {

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::Greedy: return "greedy";
    case Strategy::Sample: return "sample";
    case Strategy::Beam: return "beam";
  }
  return "?";
}

Strategy parse_strategy(const std::string& name, const std::string& what) {
  if (name == "greedy") return Strategy::Greedy;
  if (name == "sample" || name == "BaseStrategy") return Strategy::Sample;
  if (name == "beam" || name == "BeamSearchStrategy") return Strategy::Beam;
  throw InputError(detail::concat(what, ": '", name,
                                  "' is not a strategy (greedy, sample or beam; also the released "
                                  "names BaseStrategy and BeamSearchStrategy)"));
}

void validate_params(const GenerationParams& p, const std::string& where) {
  auto fail = [&](const std::string& field, const std::string& why) {
    throw InputError(detail::concat(where.empty() ? "" : where + ": ", field, " ", why));
  };
  if (p.out_seq_length < 2) fail("out_seq_length", "must be at least 2, got " + std::to_string(p.out_seq_length));
  if (p.min_gen_length < 0) fail("min_gen_length", "must be >= 0");
  if (!(std::isfinite(p.temperature) && p.temperature > 0)) fail("temperature", "must be > 0");
  if (p.top_k < 0) fail("top_k", "must be >= 0");
  if (!(p.top_p >= 0 && p.top_p <= 1)) fail("top_p", "must be in [0, 1]");
  if (p.num_beams < 1 || p.num_beams > 64) fail("num_beams", "must be in 1..64, got " + std::to_string(p.num_beams));
  if (!std::isfinite(p.length_penalty)) fail("length_penalty", "must be finite");
  if (p.no_repeat_ngram_size < 0) fail("no_repeat_ngram_size", "must be >= 0");
  for (const auto& [name, v] : {std::pair{"presence_penalty", p.presence_penalty},
                                std::pair{"frequency_penalty", p.frequency_penalty}}) {
    if (!(v >= -2 && v <= 2)) fail(name, "must be in [-2, 2]");
    if (v != 0 && p.strategy == Strategy::Beam) fail(name, "applies to greedy and sampling, not to beam search");
  }
  if (p.logit_bias.size() > kMaxLogitBias)
    fail("logit_bias", "holds at most " + std::to_string(kMaxLogitBias) + " tokens, got " +
                           std::to_string(p.logit_bias.size()));
  std::set<int32_t> biased;
  for (const auto& [token, bias] : p.logit_bias) {
    const std::string which = "token " + std::to_string(token);
    if (token < 0) fail("logit_bias", which + ": token ids are >= 0");
    if (!biased.insert(token).second) fail("logit_bias", which + " is listed twice");
    if (!(bias >= -100 && bias <= 100))
      fail("logit_bias", which + ": the bias must be in [-100, 100], got " + std::to_string(bias));
  }
  if (!p.logit_bias.empty() && p.strategy == Strategy::Beam)
    fail("logit_bias", "applies to greedy and sampling, not to beam search");
  if (p.logprobs < -1 || p.logprobs > kMaxLogprobs)
    fail("logprobs", "must be in 0.." + std::to_string(kMaxLogprobs) + " (or off), got " + std::to_string(p.logprobs));
  if (p.logprobs >= 0 && p.strategy == Strategy::Beam)
    fail("logprobs", "applies to greedy and sampling, not to beam search");
}

}  // namespace glmrt
