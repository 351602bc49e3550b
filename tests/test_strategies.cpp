// The logit bias and the presence and frequency penalties of choose_token (greedy and sampling)
// and their checks.
#include <gtest/gtest.h>

#include <vector>

#include "inference/strategies.h"
#include "kernels/error.h"

namespace glmrt {
namespace {

TokenIds ids() {
  TokenIds t;
  t.eop = 6;
  t.eos = 7;
  return t;
}

GenerationParams greedy(double presence, double frequency) {
  GenerationParams p;
  p.strategy = Strategy::Greedy;
  p.presence_penalty = presence;
  p.frequency_penalty = frequency;
  return p;
}

TEST(Strategies, PresenceAndFrequencyPenaltiesLowerGeneratedTokens) {
  // Logits: token 2 leads token 3 by 0.5, token 3 leads token 4 by 0.5.
  const std::vector<float> logits = {0, 0, 3.0f, 2.5f, 2.0f, 0, -9, -9};
  const int64_t V = static_cast<int64_t>(logits.size());
  EXPECT_EQ(choose_token(logits.data(), V, greedy(0, 0), ids(), 0, 2, {2, 2}), 2);
  // presence 0.6: token 2 (generated) drops to 2.4, below token 3.
  EXPECT_EQ(choose_token(logits.data(), V, greedy(0.6, 0), ids(), 0, 2, {2, 2}), 3);
  // The same once only: presence does not count.
  EXPECT_EQ(choose_token(logits.data(), V, greedy(0.6, 0), ids(), 0, 1, {2}), 3);
  // frequency 0.3 per occurrence: once 2.7 (still first), twice 2.4 (token 3 first).
  EXPECT_EQ(choose_token(logits.data(), V, greedy(0, 0.3), ids(), 0, 1, {2}), 2);
  EXPECT_EQ(choose_token(logits.data(), V, greedy(0, 0.3), ids(), 0, 2, {2, 2}), 3);
  // Both, on two tokens: 2 -> 3.0 - 0.2 - 2·0.4 = 2.0, 3 -> 2.5 - 0.2 - 0.4 = 1.9, 4 stays 2.0:
  // ties go to the lowest id.
  EXPECT_EQ(choose_token(logits.data(), V, greedy(0.2, 0.4), ids(), 0, 3, {2, 3, 2}), 2);
  // Negative penalties favour repeats.
  EXPECT_EQ(choose_token(logits.data(), V, greedy(-1.5, 0), ids(), 0, 1, {4}), 4);

  // Sampling: with top_k 1 the draw is the penalized argmax, whatever the seed.
  GenerationParams s = greedy(0.6, 0);
  s.strategy = Strategy::Sample;
  s.top_k = 1;
  for (uint64_t seed : {1u, 2u, 3u}) {
    s.seed = seed;
    EXPECT_EQ(choose_token(logits.data(), V, s, ids(), 0, 2, {2, 2}), 3) << seed;
  }
}

TEST(Strategies, PenaltiesAreCheckedAndNotForBeamSearch) {
  EXPECT_NO_THROW(validate_params(greedy(2.0, -2.0), "q"));
  EXPECT_THROW(validate_params(greedy(2.5, 0), "q"), InputError);
  EXPECT_THROW(validate_params(greedy(0, -3), "q"), InputError);
  GenerationParams beam = greedy(0.5, 0);
  beam.strategy = Strategy::Beam;
  try {
    validate_params(beam, "q");
    ADD_FAILURE() << "a beam search with a penalty was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("presence_penalty applies to greedy and sampling"), std::string::npos)
        << e.what();
  }
}

TEST(Strategies, LogitBiasShiftsTheListedTokens) {
  const std::vector<float> logits = {0, 0, 3.0f, 2.5f, 2.0f, 0, -9, -9};
  const int64_t V = static_cast<int64_t>(logits.size());
  GenerationParams p = greedy(0, 0);
  p.logit_bias = {{2, -0.6}};  // 2.4: token 3 leads
  EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 0), 3);
  p.logit_bias = {{2, -100}, {3, -100}};  // both all but banned: token 4
  EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 0), 4);
  p.logit_bias = {{0, 3.0}};  // 3.0 ties token 2: the lower id
  EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 0), 0);
  // With a penalty on top: token 4 biased to 2.9, token 2 generated (3.0 - 0.2).
  p = greedy(0.2, 0);
  p.logit_bias = {{4, 0.9}};
  EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 1, {2}), 4);
  // The end-token ban holds over a bias (min_gen_length): eop +100 is still banned at step 0.
  p = greedy(0, 0);
  p.logit_bias = {{6, 100}};
  p.min_gen_length = 1;
  EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 0), 2);
  EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 1), 6);
  // Sampling: +100 makes a token all but certain, whatever the seed.
  p.strategy = Strategy::Sample;
  p.top_p = 0;
  p.min_gen_length = 0;
  p.logit_bias = {{5, 100}};
  for (uint64_t seed : {1u, 2u, 3u, 4u}) {
    p.seed = seed;
    EXPECT_EQ(choose_token(logits.data(), V, p, ids(), 0, 0), 5) << seed;
  }
}

TEST(Strategies, LogitBiasIsChecked) {
  const auto message = [](const GenerationParams& p) -> std::string {
    try {
      validate_params(p, "q");
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  };
  GenerationParams p = greedy(0, 0);
  p.logit_bias = {{3, 100}, {4, -100}};
  EXPECT_EQ(message(p), "");
  p.logit_bias = {{3, 100.5}};
  EXPECT_NE(message(p).find("logit_bias token 3: the bias must be in [-100, 100]"), std::string::npos) << message(p);
  p.logit_bias = {{3, 1}, {3, 2}};
  EXPECT_NE(message(p).find("token 3 is listed twice"), std::string::npos) << message(p);
  p.logit_bias = {{-2, 1}};
  EXPECT_NE(message(p).find("token ids are >= 0"), std::string::npos) << message(p);
  p.logit_bias = {{3, 1}};
  p.strategy = Strategy::Beam;
  EXPECT_NE(message(p).find("logit_bias applies to greedy and sampling"), std::string::npos) << message(p);
}

}  // namespace
}  // namespace glmrt
