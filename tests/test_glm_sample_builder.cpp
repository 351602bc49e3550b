// The GLM blank-infilling sample builder obeys every rule of GLM130B.md §4, checked over
// thousands of samples: mode ratio, gMASK length distribution, span-length distribution, mask
// ratio, span placement, Part A / Part B layout, positions, sep, loss mask, targets, validation by
// the project's own sample parser, determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "data/glm_sample_builder.h"

namespace glmrt {
namespace {

// Raw windows of distinct tokens (so every Part-A token names its chunk index), none of them
// special (specials ≥ 150000, eos 20002, pad 0).
struct RawWindow {
  std::vector<int32_t> tokens;
  int32_t base = 0;
  std::vector<int32_t> index_of;  // token - base -> index in the window
};

RawWindow make_raw(int64_t R, std::mt19937& rng) {
  RawWindow w;
  w.base = std::uniform_int_distribution<int32_t>(30000, 100000)(rng);
  std::vector<int32_t> perm(R);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  w.tokens.resize(R);
  w.index_of.resize(R);
  for (int64_t j = 0; j < R; ++j) {
    w.tokens[j] = w.base + perm[j];
    w.index_of[perm[j]] = static_cast<int32_t>(j);
  }
  return w;
}

GlmConfig model_config(int64_t seq) {
  GlmConfig c;  // GLM-130B's vocabulary (150528) and token ids
  c.max_sequence_length = seq;
  return c;
}

// The project's validation: the sample as a JSON line through parse_sample_json (which runs
// build_batch: ids < vocab, positions < max_sequence_length, sep and segments in range, ≥ 1 loss).
std::string validate(const BuiltSample& b, const GlmConfig& config) {
  nlohmann::json j;
  j["tokens"] = b.sample.tokens;
  j["targets"] = b.sample.targets;
  j["loss_mask"] = b.sample.loss_mask;
  j["position_ids"] = b.sample.position_ids;
  j["sep"] = b.sample.sep;
  j["segment_lengths"] = b.sample.segment_lengths;
  j["mode"] = b.mode;
  try {
    parse_sample_json(j.dump(), config, "sample");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

bool same(const BuiltSample& a, const BuiltSample& b) {
  return a.mode == b.mode && a.sample.tokens == b.sample.tokens &&
         a.sample.targets == b.sample.targets && a.sample.position_ids == b.sample.position_ids &&
         a.sample.sep == b.sample.sep && a.sample.segment_lengths == b.sample.segment_lengths &&
         a.sample.loss_mask == b.sample.loss_mask;
}

// What the checkers observed, for the statistics.
struct Stats {
  int64_t samples = 0, gmask = 0;
  std::vector<int64_t> gen_lens;
  int64_t chunks = 0, masked_total = 0, chunk_tokens = 0;
  int64_t below_target = 0;  // chunks masking < ⌈ratio·C⌉ (the single-span ones)
  std::map<int64_t, int64_t> span_hist;
  int64_t first_two_blocks = 0, first_two_in_order = 0;  // Part-B order of the first two spans
  int64_t truncated_slots = 0;
};

#define CHECK_OR(cond, msg)                                                    \
  do {                                                                         \
    if (!(cond)) return std::string(msg) + " [" #cond "]";                     \
  } while (0)

std::string check_gmask(const BuiltSample& b, const RawWindow& raw, const GlmSampleBuilder& builder,
                        const TokenIds& ids, Stats& st) {
  const Sample& s = b.sample;
  const int64_t S = builder.seq_length(), R = builder.raw_length();
  CHECK_OR(static_cast<int64_t>(s.tokens.size()) == S, "row length");
  CHECK_OR(s.segment_lengths == std::vector<int32_t>{static_cast<int32_t>(S)}, "one segment");
  CHECK_OR(s.sep.size() == 1, "one sep");
  const int64_t ctx = s.sep[0] - 1, gen_len = R - ctx;
  CHECK_OR(ctx >= 0 && ctx < R, "sep in range");
  CHECK_OR(gen_len >= std::max<int64_t>(1, R / 5) && gen_len <= R, "gen_len in [0.2R, R]");
  for (int64_t i = 0; i < ctx; ++i) CHECK_OR(s.tokens[i] == raw.tokens[i], "context = src[:s]");
  CHECK_OR(s.tokens[ctx] == ids.gmask && s.tokens[ctx + 1] == ids.sop, "[gMASK, sop] after the context");
  for (int64_t i = ctx; i < R - 1; ++i) CHECK_OR(s.tokens[i + 2] == raw.tokens[i], "then tgt[:-1]");
  for (int64_t i = R + 1; i < S; ++i)
    CHECK_OR(s.tokens[i] == ids.pad && s.targets[i] == ids.pad && s.loss_mask[i] == 0.0f, "padding");
  for (int64_t i = 0; i < R; ++i) CHECK_OR(s.targets[i] == s.tokens[i + 1], "targets = next token");
  CHECK_OR(s.targets[R] == raw.tokens[R - 1], "last target = last raw token");
  for (int64_t i = 0; i < S; ++i) {
    CHECK_OR(s.position_ids[i] == i, "positions 0..S-1");
    const bool generated = i > ctx && i <= R;  // positions whose target is a tgt token
    CHECK_OR(s.loss_mask[i] == (generated ? 1.0f : 0.0f), "loss exactly on the generated part");
    if (generated) CHECK_OR(s.targets[i] == raw.tokens[ctx + (i - ctx - 1)], "generated target = tgt");
    CHECK_OR(s.tokens[i] != ids.eop && s.tokens[i] != ids.mask, "no eop / [MASK] in gMASK mode");
  }
  st.gmask++;
  st.gen_lens.push_back(gen_len);
  return "";
}

std::string check_mask(const BuiltSample& b, const RawWindow& raw, const GlmSampleBuilder& builder,
                       const TokenIds& ids, Stats& st) {
  const Sample& s = b.sample;
  const GlmBuilderConfig& cfg = builder.config();
  const int64_t S = builder.seq_length(), slot = builder.slot_length(), C = builder.chunk_length();
  const int64_t target = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(cfg.mask_ratio * C - 1e-9)));
  CHECK_OR(static_cast<int64_t>(s.tokens.size()) == S, "row length");
  CHECK_OR(slot * cfg.segments == S, "slots fill the row");
  CHECK_OR(s.segment_lengths == std::vector<int32_t>(cfg.segments, static_cast<int32_t>(slot)),
           "segment lengths = segments × S/segments");
  CHECK_OR(static_cast<int64_t>(s.sep.size()) == cfg.segments, "one sep per slot");
  for (int64_t c = 0; c < cfg.segments; ++c) {
    const int64_t base = c * slot, a_len = s.sep[c];
    const int32_t* tok = s.tokens.data() + base;
    const int32_t* tgt = s.targets.data() + base;
    const int32_t* pos = s.position_ids.data() + base;
    const float* loss = s.loss_mask.data() + base;
    CHECK_OR(a_len >= 1 && a_len < slot, "Part A shorter than the slot");
    // Part A: the chunk with each span replaced by one [MASK]; recover the spans.
    std::vector<int64_t> span_start, span_len, mask_at;  // in chunk coordinates / Part-A index
    int64_t next = 0;  // next chunk index expected
    for (int64_t i = 0; i < a_len; ++i) {
      CHECK_OR(pos[i] == i, "Part-A positions 0..|A|-1");
      CHECK_OR(loss[i] == 0.0f, "no loss on Part A");
      CHECK_OR(tgt[i] == tok[i + 1], "Part-A targets = next token");
      if (tok[i] == ids.mask) {
        CHECK_OR(i == 0 || tok[i - 1] != ids.mask, "spans never touch (adjacent [MASK])");
        int64_t end = C;  // the span runs to the next unmasked chunk token
        if (i + 1 < a_len) {
          CHECK_OR(tok[i + 1] - raw.base >= 0 && tok[i + 1] - raw.base < (int64_t)raw.index_of.size(),
                   "Part-A token from the window");
          end = raw.index_of[tok[i + 1] - raw.base] - c * C;
        }
        CHECK_OR(end > next, "a [MASK] covers ≥ 1 token");
        span_start.push_back(next);
        span_len.push_back(end - next);
        mask_at.push_back(i);
        next = end;
      } else {
        CHECK_OR(next < C && tok[i] == raw.tokens[c * C + next], "Part A reconstructs the chunk");
        ++next;
      }
    }
    CHECK_OR(next == C, "Part A covers the whole chunk");
    const int64_t nspan = static_cast<int64_t>(span_len.size());
    CHECK_OR(nspan >= 1, "at least one span");
    int64_t masked = 0;
    for (int64_t l : span_len) {
      CHECK_OR(l >= 1 && l <= cfg.max_span, "span length in 1..max_span");
      masked += l;
    }
    CHECK_OR(masked <= target - 1 + cfg.max_span, "masked fraction not far above the ratio");
    if (masked < target) {
      CHECK_OR(nspan == 1, "only a single-span chunk masks less than the ratio");
      st.below_target++;
    }
    // Part B: blocks [sop] + span, targets span + [eop], all at the [MASK]'s position.
    int64_t i = a_len, total = a_len;
    for (int64_t l : span_len) total += l + 1;
    const bool truncated = total > slot;
    std::vector<int64_t> order;  // span ordinal of each Part-B block
    while (i < slot && tok[i] != ids.pad) {
      CHECK_OR(tok[i] == ids.sop, "a Part-B block starts with sop");
      const int32_t p = pos[i];
      const auto it = std::find(mask_at.begin(), mask_at.end(), static_cast<int64_t>(p));
      CHECK_OR(it != mask_at.end(), "Part-B position is a [MASK]'s position");
      const int64_t j = it - mask_at.begin();
      CHECK_OR(std::find(order.begin(), order.end(), j) == order.end(), "each span once in Part B");
      order.push_back(j);
      for (int64_t k = 0; k <= span_len[j]; ++k, ++i) {
        if (i == slot) {
          CHECK_OR(truncated, "only an overflowing Part B is cut");
          break;
        }
        const int32_t want_tok = k == 0 ? ids.sop : raw.tokens[c * C + span_start[j] + k - 1];
        const int32_t want_tgt = k == span_len[j] ? ids.eop : raw.tokens[c * C + span_start[j] + k];
        CHECK_OR(tok[i] == want_tok, "Part-B input = [sop] + span");
        CHECK_OR(tgt[i] == want_tgt, "Part-B target = span + [eop]");
        CHECK_OR(pos[i] == p, "every Part-B token at its [MASK]'s position");
        CHECK_OR(loss[i] == 1.0f, "loss on Part B");
      }
    }
    if (truncated) {
      CHECK_OR(i == slot, "an overflowing Part B fills the slot");
      st.truncated_slots++;
    } else {
      CHECK_OR(static_cast<int64_t>(order.size()) == nspan, "all spans in Part B");
      CHECK_OR(i == total, "Part B ends after the last span");
    }
    for (; i < slot; ++i)
      CHECK_OR(tok[i] == ids.pad && tgt[i] == ids.pad && loss[i] == 0.0f && pos[i] == 0, "slot padding");
    if (order.size() >= 2) {
      st.first_two_blocks++;
      st.first_two_in_order += order[0] < order[1];
    }
    st.chunks++;
    st.masked_total += masked;
    st.chunk_tokens += C;
    for (int64_t l : span_len) st.span_hist[l]++;
  }
  return "";
}

std::string check(const BuiltSample& b, const RawWindow& raw, const GlmSampleBuilder& builder,
                  const TokenIds& ids, Stats& st) {
  st.samples++;
  if (b.mode == "gMASK") return check_gmask(b, raw, builder, ids, st);
  if (b.mode == "MASK") return check_mask(b, raw, builder, ids, st);
  return "unknown mode " + b.mode;
}

// Truncated Poisson(λ) on 1..kmax.
std::vector<double> truncated_poisson(double lambda, int64_t kmax) {
  std::vector<double> p(kmax + 1, 0.0);
  double z = 0;
  for (int64_t k = 1; k <= kmax; ++k) z += p[k] = std::exp(k * std::log(lambda) - lambda - std::lgamma(k + 1.0));
  for (double& v : p) v /= z;
  return p;
}

Stats run_many(const GlmSampleBuilder& builder, int64_t count, uint32_t raw_seed) {
  const TokenIds ids;
  const GlmConfig config = model_config(builder.seq_length());
  std::mt19937 rng(raw_seed);
  Stats st;
  for (int64_t n = 0; n < count; ++n) {
    const RawWindow raw = make_raw(builder.raw_length(), rng);
    const BuiltSample b = builder.build(raw.tokens.data(), n);
    const std::string err = check(b, raw, builder, ids, st);
    EXPECT_EQ(err, "") << "sample " << n << " (" << b.mode << ")";
    const std::string invalid = validate(b, config);
    EXPECT_EQ(invalid, "") << "sample " << n;
    if (!err.empty() || !invalid.empty()) break;
  }
  return st;
}

TEST(GlmSampleBuilder, SizesScaleWithTheSequenceLength) {
  const TokenIds ids;
  GlmSampleBuilder full(ids, 2048, {}, 1);
  EXPECT_EQ(full.raw_length(), 2000);
  EXPECT_EQ(full.slot_length(), 512);
  EXPECT_EQ(full.chunk_length(), 500);
  GlmSampleBuilder s256(ids, 256, {}, 1);
  EXPECT_EQ(s256.raw_length(), 250);
  EXPECT_EQ(s256.slot_length(), 64);
  EXPECT_EQ(s256.chunk_length(), 62);
  GlmSampleBuilder s64(ids, 64, {}, 1);
  EXPECT_EQ(s64.raw_length(), 62);
  EXPECT_EQ(s64.chunk_length(), 15);
}

// 3000 samples at S = 256: every rule on every sample, and the distributions.
TEST(GlmSampleBuilder, ObeysEveryRuleOverThousandsOfSamples) {
  const GlmBuilderConfig cfg;
  GlmSampleBuilder builder(TokenIds{}, 256, cfg, 1234);
  const int64_t N = 3000;
  const Stats st = run_many(builder, N, 7);
  ASSERT_EQ(st.samples, N);

  // Mode ratio: binomial(N, 0.7), 4σ.
  const double sigma = std::sqrt(N * cfg.gmask_prob * (1 - cfg.gmask_prob));
  EXPECT_NEAR(st.gmask, N * cfg.gmask_prob, 4 * sigma);

  // gen_len ~ Uniform{50..250}: mean, spread and both ends reached.
  const int64_t R = builder.raw_length(), lo = R / 5;
  const double gen_mean = std::accumulate(st.gen_lens.begin(), st.gen_lens.end(), 0.0) / st.gen_lens.size();
  const double uni_sd = std::sqrt(((R - lo + 1.0) * (R - lo + 1.0) - 1) / 12.0);
  EXPECT_NEAR(gen_mean, (lo + R) / 2.0, 5 * uni_sd / std::sqrt(st.gen_lens.size()));
  std::vector<int64_t> quarters(4, 0);
  for (int64_t g : st.gen_lens) quarters[std::min<int64_t>(3, (g - lo) * 4 / (R - lo + 1))]++;
  for (int64_t q : quarters) EXPECT_NEAR(q, st.gen_lens.size() / 4.0, 5 * std::sqrt(st.gen_lens.size() * 3 / 16.0));
  EXPECT_EQ(*std::min_element(st.gen_lens.begin(), st.gen_lens.end()) < lo + 5, true);
  EXPECT_EQ(*std::max_element(st.gen_lens.begin(), st.gen_lens.end()) > R - 5, true);

  // Span lengths ~ Poisson(3) restricted to 1..39: chi-square over 1..8 and 9+.
  const std::vector<double> p = truncated_poisson(cfg.poisson_lambda, cfg.max_span);
  int64_t spans = 0;
  double sum_len = 0;
  for (auto [l, n] : st.span_hist) spans += n, sum_len += double(l) * n;
  double chi2 = 0;
  for (int64_t bin = 1; bin <= 9; ++bin) {
    double expect = 0;
    int64_t seen = 0;
    for (int64_t k = bin; k <= (bin == 9 ? cfg.max_span : bin); ++k) {
      expect += p[k] * spans;
      seen += st.span_hist.count(k) ? st.span_hist.at(k) : 0;
    }
    chi2 += (seen - expect) * (seen - expect) / expect;
  }
  EXPECT_LT(chi2, 35.0) << "df = 8";  // 99.99% quantile ≈ 31.8
  double mean = 0, var = 0;
  for (int64_t k = 1; k <= cfg.max_span; ++k) mean += k * p[k];
  for (int64_t k = 1; k <= cfg.max_span; ++k) var += (k - mean) * (k - mean) * p[k];
  EXPECT_NEAR(sum_len / spans, mean, 5 * std::sqrt(var / spans));
  EXPECT_NEAR(mean, 3.0 / (1 - std::exp(-3.0)), 1e-6);

  // Masked fraction: ≥ 15% except single-span chunks (p = 0.02), and not far above.
  const double mask_ratio = double(st.masked_total) / st.chunk_tokens;
  EXPECT_GT(mask_ratio, cfg.mask_ratio);
  EXPECT_LT(mask_ratio, cfg.mask_ratio + 0.06);
  const double single_sd = std::sqrt(st.chunks * cfg.single_span_prob * (1 - cfg.single_span_prob));
  EXPECT_NEAR(st.below_target, st.chunks * cfg.single_span_prob, 4 * single_sd + 2);
  EXPECT_GT(st.below_target, 0);

  // Part B is shuffled: the first two blocks are in [MASK] order half of the time.
  const double order_sd = std::sqrt(st.first_two_blocks * 0.25);
  EXPECT_NEAR(st.first_two_in_order, st.first_two_blocks * 0.5, 4 * order_sd);
  EXPECT_GT(st.truncated_slots, 0);  // the overflow path is exercised

  std::cout << "[ stats    ] S=256: " << st.samples << " samples, gMASK ratio "
            << double(st.gmask) / st.samples << ", gen_len mean " << gen_mean << " (expect "
            << (lo + R) / 2.0 << "), " << st.chunks << " chunks, " << spans
            << " spans, mean span length " << sum_len / spans << " (expect " << mean
            << "), chi2 " << chi2 << ", mean mask ratio " << mask_ratio << ", below-ratio chunks "
            << st.below_target << ", first-two-in-order " << double(st.first_two_in_order) / st.first_two_blocks
            << ", truncated slots " << st.truncated_slots << "/" << st.chunks << "\n";
}

// GLM-130B's own sizes: 2048 tokens from 2000, four 500-token chunks in 512-token slots.
TEST(GlmSampleBuilder, FullSizeSamplesInBothModes) {
  GlmBuilderConfig mask_only;
  mask_only.gmask_prob = 0.0;
  GlmBuilderConfig gmask_only;
  gmask_only.gmask_prob = 1.0;
  GlmSampleBuilder mask(TokenIds{}, 2048, mask_only, 99), gmask(TokenIds{}, 2048, gmask_only, 99);
  const Stats sm = run_many(mask, 40, 3);
  EXPECT_EQ(sm.samples, 40);
  EXPECT_EQ(sm.gmask, 0);
  EXPECT_EQ(sm.chunks, 160);
  const double ratio = double(sm.masked_total) / sm.chunk_tokens;
  EXPECT_GE(ratio, 0.14);  // ≥ 75 of 500 except single-span chunks
  EXPECT_LT(ratio, 0.20);
  const Stats sg = run_many(gmask, 20, 4);
  EXPECT_EQ(sg.gmask, 20);
  for (int64_t g : sg.gen_lens) EXPECT_TRUE(g >= 400 && g <= 2000) << g;
  std::cout << "[ stats    ] S=2048: mask ratio " << ratio << ", truncated slots " << sm.truncated_slots
            << "/" << sm.chunks << "\n";
}

// Tiny models: S = 64 (chunks of 15 in slots of 16) and S = 16 (chunks of 3 in slots of 4) still
// mask ≥ 1 span, place spans apart and give valid samples.
TEST(GlmSampleBuilder, TinySequenceLengths) {
  for (int64_t S : {16, 32, 64, 128}) {
    GlmBuilderConfig cfg;
    cfg.gmask_prob = 0.3;
    GlmSampleBuilder builder(TokenIds{}, S, cfg, 5);
    const Stats st = run_many(builder, 300, 11);
    EXPECT_EQ(st.samples, 300) << "S=" << S;
    EXPECT_GT(st.chunks, 0);
    EXPECT_GT(st.gmask, 0);
  }
  GlmBuilderConfig two;
  two.segments = 2;
  two.gmask_prob = 0.0;
  GlmSampleBuilder builder(TokenIds{}, 100, two, 5);  // slots of 50, chunks of 48
  EXPECT_EQ(run_many(builder, 200, 12).chunks, 400);
}

TEST(GlmSampleBuilder, UsesTheConfiguredTokenIds) {
  TokenIds ids;
  ids.mask = 250, ids.gmask = 251, ids.sop = 254, ids.eop = 255, ids.pad = 3;
  GlmBuilderConfig cfg;
  cfg.gmask_prob = 0.5;
  GlmSampleBuilder builder(ids, 128, cfg, 8);
  std::vector<int32_t> raw(builder.raw_length(), 17);
  bool saw[2] = {false, false};
  for (int64_t n = 0; n < 50; ++n) {
    const BuiltSample b = builder.build(raw.data(), n);
    const auto& t = b.sample.tokens;
    const bool has_mask = std::count(t.begin(), t.end(), 250) > 0;
    const bool has_gmask = std::count(t.begin(), t.end(), 251) == 1;
    EXPECT_EQ(b.mode == "MASK", has_mask && !has_gmask);
    EXPECT_EQ(b.mode == "gMASK", has_gmask && !has_mask);
    EXPECT_GT(std::count(t.begin(), t.end(), 254), 0);
    EXPECT_EQ(std::count(t.begin(), t.end(), 150000) + std::count(t.begin(), t.end(), 150004), 0);
    if (b.mode == "MASK") {
      EXPECT_GT(std::count(b.sample.targets.begin(), b.sample.targets.end(), 255), 0);
    }
    if (b.mode == "gMASK") {
      EXPECT_EQ(t.back(), 3);  // padding after the generated part
    }
    saw[b.mode == "MASK"] = true;
  }
  EXPECT_TRUE(saw[0] && saw[1]);
}

TEST(GlmSampleBuilder, IsAPureFunctionOfSeedAndIndex) {
  const GlmBuilderConfig cfg;
  GlmSampleBuilder a(TokenIds{}, 256, cfg, 42), b(TokenIds{}, 256, cfg, 42), other(TokenIds{}, 256, cfg, 43);
  std::mt19937 rng(1);
  const RawWindow raw = make_raw(a.raw_length(), rng);
  const int64_t N = 64;
  std::vector<BuiltSample> forward(N), backward(N), threaded(N);
  for (int64_t n = 0; n < N; ++n) forward[n] = a.build(raw.tokens.data(), n);
  for (int64_t n = N - 1; n >= 0; --n) backward[n] = b.build(raw.tokens.data(), n);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (int64_t n = t; n < N; n += 2) threaded[n] = a.build(raw.tokens.data(), n);
    });
  for (auto& th : threads) th.join();
  int differs_next = 0, differs_seed = 0;
  for (int64_t n = 0; n < N; ++n) {
    EXPECT_TRUE(same(forward[n], backward[n])) << n;
    EXPECT_TRUE(same(forward[n], threaded[n])) << n;
    EXPECT_TRUE(same(forward[n], a.build(std::span<const int32_t>(raw.tokens), n))) << n;
    if (n + 1 < N) differs_next += !same(forward[n], forward[n + 1]);
    differs_seed += !same(forward[n], other.build(raw.tokens.data(), n));
  }
  EXPECT_EQ(differs_next, N - 1);  // same raw window, different index: a different sample
  EXPECT_EQ(differs_seed, N);
  EXPECT_THROW(a.build(std::span<const int32_t>(raw.tokens.data(), 10), 0), InputError);
}

TEST(GlmSampleBuilder, ParsesAndValidatesTheYamlSection) {
  auto parse = [](const std::string& text) {
    YamlFields f(YAML::Load(text), "data.glm", "run.yaml");
    return parse_glm_builder_section(f);
  };
  const GlmBuilderConfig def = parse("{}");
  EXPECT_EQ(def.gmask_prob, 0.7);
  EXPECT_EQ(def.mask_ratio, 0.15);
  EXPECT_EQ(def.poisson_lambda, 3.0);
  EXPECT_EQ(def.single_span_prob, 0.02);
  EXPECT_EQ(def.max_span, 39);
  EXPECT_EQ(def.segments, 4);
  YamlFields null_section(YAML::Node(), "data.glm", "run.yaml");
  EXPECT_EQ(parse_glm_builder_section(null_section).segments, 4);
  const GlmBuilderConfig c = parse(
      "gmask_prob: 0.5\nmask_ratio: 0.2\npoisson_lambda: 2.5\nmax_span: 10\n"
      "single_span_prob: 0\nsegments: 2\n");
  EXPECT_EQ(c.gmask_prob, 0.5);
  EXPECT_EQ(c.mask_ratio, 0.2);
  EXPECT_EQ(c.poisson_lambda, 2.5);
  EXPECT_EQ(c.max_span, 10);
  EXPECT_EQ(c.single_span_prob, 0.0);
  EXPECT_EQ(c.segments, 2);
  auto expect_error = [&](const std::string& text, const std::string& needle) {
    try {
      parse(text);
      ADD_FAILURE() << "accepted " << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("run.yaml"), std::string::npos) << e.what();
    }
  };
  expect_error("gmask_prob: 1.5", "data.glm.gmask_prob");
  expect_error("mask_ratio: 0", "data.glm.mask_ratio");
  expect_error("mask_ratio: 0.6", "data.glm.mask_ratio");
  expect_error("poisson_lambda: -1", "data.glm.poisson_lambda");
  expect_error("max_span: 0", "data.glm.max_span");
  expect_error("single_span_prob: -0.1", "data.glm.single_span_prob");
  expect_error("segments: 0", "data.glm.segments");
  expect_error("segments: two", "data.glm.segments");
  expect_error("mask_raito: 0.1", "unknown key data.glm.mask_raito");
}

TEST(GlmSampleBuilder, RefusesSequenceLengthsItCannotSplit) {
  auto expect_error = [](int64_t S, GlmBuilderConfig cfg, const std::string& needle) {
    try {
      GlmSampleBuilder b(TokenIds{}, S, cfg, 0);
      ADD_FAILURE() << "accepted S=" << S;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  GlmBuilderConfig three;
  three.segments = 3;
  expect_error(256, three, "data.glm.segments");
  expect_error(4, {}, "data.glm.segments");  // R = 3: no token per chunk
  expect_error(0, {}, "positive");
  GlmBuilderConfig bad;
  bad.mask_ratio = 2;
  expect_error(256, bad, "data.glm.mask_ratio");
}

}  // namespace
}  // namespace glmrt
