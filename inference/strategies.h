// The decoding strategies of inference/SEMANTICS.md on host fp32 logits of the whole vocabulary:
// greedy, sampling (temperature, top-k, top-p, a counter-based seeded draw) and beam search
// (length penalty, no-repeat n-grams, min_gen_length, deterministic or sampled candidates).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "inference/generation.h"

namespace glmrt {

// The next token of a greedy or sampling query. `step` = tokens of the blank generated so far
// (it bans the end tokens while step < min_gen_length and keys the draw with `blank`);
// `generated` = those tokens (for the presence and frequency penalties).
int32_t choose_token(const float* logits, int64_t vocab, const GenerationParams& p,
                     const TokenIds& ids, int64_t blank, int64_t step,
                     const std::vector<int32_t>& generated = {});

// The model's log-probability of `chosen` at a position (log-softmax of the raw logits, in double)
// and the `top` most likely tokens with theirs, highest first, ties by the lower id.
TokenLogprobs token_logprobs(const float* logits, int64_t vocab, int32_t chosen, int64_t top);

class BeamSearch {
 public:
  // `context` = the blank's context (with sop): the one beam the search starts from.
  BeamSearch(const GenerationParams& p, const TokenIds& ids, std::vector<int32_t> context,
             int64_t blank);

  struct Step {
    std::vector<int32_t> parents;  // for each continuing beam: the index of its parent beam
    std::vector<int32_t> tokens;   // and its new token
  };
  // One step from the logits of every current beam (rows() of them, `vocab` each).
  Step step(const std::vector<const float*>& logits, int64_t vocab);

  int64_t rows() const { return static_cast<int64_t>(beams_.size()); }
  bool done() const { return done_; }
  int64_t sequence_length() const { return beams_.empty() ? 0 : static_cast<int64_t>(beams_[0].full.size()); }
  // Ends the search (adding the continuing beams when it is not done) and returns the best
  // beam's generated tokens without a final end token; `stopped` tells whether it had one.
  std::vector<int32_t> finish(bool& stopped);

 private:
  struct Beam {
    std::vector<int32_t> full;
    double score = 0;
    std::map<std::vector<int32_t>, std::vector<int32_t>> bans;
  };
  bool is_end(int32_t t) const { return t == ids_.eop || t == ids_.eos; }
  double penalized(double score, size_t length) const;
  void add_end_beam(double score, std::vector<int32_t> full);

  GenerationParams p_;
  TokenIds ids_;
  size_t context_length_;
  int64_t blank_;
  std::vector<Beam> beams_;
  std::vector<std::pair<double, std::vector<int32_t>>> end_beams_;  // best first
  bool done_ = false;
  int64_t generated_ = 0;
};

}  // namespace glmrt
