#include "data/glm_sample_builder.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "kernels/philox.h"

namespace glmrt {

namespace {

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Checks every range of GlmBuilderConfig; `fail(key, why)` throws.
template <class Fail>
void check_config(const GlmBuilderConfig& c, Fail fail) {
  if (!(c.gmask_prob >= 0.0 && c.gmask_prob <= 1.0))
    fail("gmask_prob", "must be a probability in [0, 1], got " + num(c.gmask_prob));
  if (!(c.mask_ratio > 0.0 && c.mask_ratio <= 0.5))
    fail("mask_ratio", "must be in (0, 0.5], got " + num(c.mask_ratio));
  if (!(c.poisson_lambda > 0.0 && std::isfinite(c.poisson_lambda)))
    fail("poisson_lambda", "must be a positive number, got " + num(c.poisson_lambda));
  if (!(c.single_span_prob >= 0.0 && c.single_span_prob <= 1.0))
    fail("single_span_prob", "must be a probability in [0, 1], got " + num(c.single_span_prob));
  if (c.max_span < 1) fail("max_span", "must be at least 1, got " + std::to_string(c.max_span));
  if (c.segments < 1) fail("segments", "must be at least 1, got " + std::to_string(c.segments));
}

// The random draws of one stream of one sample: Philox(key, counter = (sample index,
// stream << 32 | block)). Streams: 0 = mode and gMASK length, 1 + c = [MASK]-mode chunk c; each
// stream's draws therefore do not depend on how many draws another stream made.
class Draws {
 public:
  Draws(uint64_t key, uint64_t index, uint64_t stream) : key_(key), index_(index), base_(stream << 32) {}

  uint32_t word() {
    if (used_ == 4) {
      Philox::generate(key_, index_, base_ | block_++, buf_);
      used_ = 0;
    }
    return buf_[used_++];
  }
  // Uniform in [0, 1) with 53 random bits.
  double unit() {
    const uint64_t a = word() >> 5, b = word() >> 6;
    return (static_cast<double>(a) * 67108864.0 + static_cast<double>(b)) / 9007199254740992.0;
  }
  // Uniform in [0, n), n ≥ 1 (bias ≤ n / 2^64).
  uint64_t below(uint64_t n) {
    const uint64_t hi = word();
    return ((hi << 32) | word()) % n;
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  uint64_t key_, index_, base_;
  uint64_t block_ = 0;
  uint32_t buf_[4] = {};
  int used_ = 4;
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr uint64_t kDataDomain = 0x474C4D2D44415441ull;  // "GLM-DATA": apart from dropout/init keys

}  // namespace

GlmBuilderConfig parse_glm_builder_section(YamlFields& f) {
  f.expect_keys({"gmask_prob", "mask_ratio", "poisson_lambda", "max_span", "single_span_prob",
                 "segments"});
  GlmBuilderConfig c;
  c.gmask_prob = f.get<double>("gmask_prob", c.gmask_prob);
  c.mask_ratio = f.get<double>("mask_ratio", c.mask_ratio);
  c.poisson_lambda = f.get<double>("poisson_lambda", c.poisson_lambda);
  c.max_span = f.get<int64_t>("max_span", c.max_span);
  c.single_span_prob = f.get<double>("single_span_prob", c.single_span_prob);
  c.segments = f.get<int64_t>("segments", c.segments);
  f.finish();
  check_config(c, [&](const std::string& key, const std::string& why) {
    throw ConfigError(f.where(key) + ": " + why);
  });
  return c;
}

GlmSampleBuilder::GlmSampleBuilder(const TokenIds& tokens, int64_t seq_length,
                                   GlmBuilderConfig config, uint64_t seed)
    : tokens_(tokens), seq_length_(seq_length), config_(config),
      key_(splitmix64(seed ^ kDataDomain)) {
  check_config(config_, [](const std::string& key, const std::string& why) {
    throw ConfigError("data.glm." + key + ": " + why);
  });
  if (seq_length_ < 1)
    throw ConfigError("data.glm: sequence length " + std::to_string(seq_length_) +
                      " must be positive");
  if (seq_length_ % config_.segments != 0)
    throw ConfigError("data.glm.segments: sequence length " + std::to_string(seq_length_) +
                      " is not divisible by segments " + std::to_string(config_.segments));
  raw_length_ = seq_length_ * 2000 / 2048;
  slot_length_ = seq_length_ / config_.segments;
  chunk_length_ = raw_length_ / config_.segments;
  if (chunk_length_ < 1)
    throw ConfigError("data.glm.segments: sequence length " + std::to_string(seq_length_) +
                      " gives raw windows of " + std::to_string(raw_length_) +
                      " tokens, fewer than one per segment (" + std::to_string(config_.segments) + ")");
  // Poisson(λ) restricted to 1..max_span (no span can exceed the chunk either), normalised in
  // log space so a large λ cannot underflow every weight.
  const int64_t kmax = std::min(config_.max_span, chunk_length_);
  std::vector<double> logp(kmax);
  for (int64_t k = 1; k <= kmax; ++k)
    logp[k - 1] = k * std::log(config_.poisson_lambda) - std::lgamma(static_cast<double>(k) + 1.0);
  const double top = *std::max_element(logp.begin(), logp.end());
  span_cdf_.resize(kmax);
  double acc = 0;
  for (int64_t k = 0; k < kmax; ++k) span_cdf_[k] = acc += std::exp(logp[k] - top);
  for (double& v : span_cdf_) v /= acc;
  span_cdf_.back() = 1.0;
}

BuiltSample GlmSampleBuilder::build(std::span<const int32_t> raw, int64_t sample_index) const {
  if (static_cast<int64_t>(raw.size()) != raw_length_)
    throw InputError("GLM sample builder: raw window of " + std::to_string(raw.size()) +
                     " tokens, expected " + std::to_string(raw_length_));
  return build(raw.data(), sample_index);
}

BuiltSample GlmSampleBuilder::build(const int32_t* raw, int64_t sample_index) const {
  const uint64_t index = static_cast<uint64_t>(sample_index);
  const size_t n = static_cast<size_t>(seq_length_);
  BuiltSample b;
  Sample& s = b.sample;
  s.tokens.assign(n, tokens_.pad);
  s.targets.assign(n, tokens_.pad);
  s.position_ids.assign(n, 0);
  s.loss_mask.assign(n, 0.0f);
  Draws mode(key_, index, 0);
  if (mode.unit() < config_.gmask_prob) {
    b.mode = "gMASK";
    build_gmask(raw, index, s);
  } else {
    b.mode = "MASK";
    build_mask(raw, index, s);
  }
  return b;
}

void GlmSampleBuilder::build_gmask(const int32_t* raw, uint64_t index, Sample& out) const {
  Draws d(key_, index, 0);
  d.unit();  // the mode draw
  const int64_t R = raw_length_;
  const int64_t lo = std::max<int64_t>(1, R / 5);  // ⌊0.2·R⌋
  const int64_t gen_len = lo + static_cast<int64_t>(d.below(static_cast<uint64_t>(R - lo + 1)));
  const int64_t ctx = R - gen_len;
  // tokens: raw[:ctx] + [gMASK, sop] + raw[ctx:R-1]  (R + 1 ≤ seq_length tokens)
  int64_t t = 0;
  for (int64_t i = 0; i < ctx; ++i) out.tokens[t++] = raw[i];
  out.tokens[t++] = tokens_.gmask;
  out.tokens[t++] = tokens_.sop;
  for (int64_t i = ctx; i < R - 1; ++i) out.tokens[t++] = raw[i];
  const int64_t len = t;  // R + 1
  for (int64_t i = 0; i + 1 < len; ++i) out.targets[i] = out.tokens[i + 1];
  out.targets[len - 1] = raw[R - 1];
  for (int64_t i = ctx + 1; i < len; ++i) out.loss_mask[i] = 1.0f;
  std::iota(out.position_ids.begin(), out.position_ids.end(), 0);
  out.sep = {static_cast<int32_t>(ctx + 1)};
  out.segment_lengths = {static_cast<int32_t>(seq_length_)};
}

void GlmSampleBuilder::build_mask(const int32_t* raw, uint64_t index, Sample& out) const {
  const int64_t C = chunk_length_, slot = slot_length_;
  const int64_t target =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(config_.mask_ratio * C - 1e-9)));
  const int64_t table = static_cast<int64_t>(span_cdf_.size());
  out.sep.clear();
  out.segment_lengths.clear();
  std::vector<int64_t> lens, starts;
  std::vector<int32_t> tok, tgt, pos;
  std::vector<float> loss;
  for (int64_t c = 0; c < config_.segments; ++c) {
    const int32_t* chunk = raw + c * C;
    Draws d(key_, index, 1 + static_cast<uint64_t>(c));
    const bool single = d.unit() < config_.single_span_prob;
    // Span lengths. A length that could no longer be placed (sum + gaps > C; only in tiny
    // chunks) is excluded: the draw is from the distribution restricted to the lengths that fit.
    lens.clear();
    int64_t sum = 0;
    do {
      const int64_t fit = std::min(table, C - sum - static_cast<int64_t>(lens.size()));
      const double u = d.unit() * span_cdf_[fit - 1];
      int64_t k = std::upper_bound(span_cdf_.begin(), span_cdf_.begin() + fit, u) - span_cdf_.begin();
      k = std::min(k, fit - 1) + 1;
      lens.push_back(k);
      sum += k;
    } while (!single && sum < target);
    // Placement: uniform gaps, ≥ 1 unmasked token between spans.
    d.shuffle(lens);
    const int64_t nspan = static_cast<int64_t>(lens.size());
    const uint64_t free = static_cast<uint64_t>(C - sum - nspan + 1);
    std::vector<uint64_t> places(nspan);
    for (auto& p : places) p = d.below(free + 1);
    std::sort(places.begin(), places.end());
    starts.assign(nspan, 0);
    for (int64_t j = 0, offset = 0; j < nspan; ++j) {
      starts[j] = offset + static_cast<int64_t>(places[j]);
      offset += lens[j] + 1;
    }
    // Part A.
    tok.clear();
    pos.clear();
    tgt.clear();
    loss.clear();
    std::vector<int32_t> mask_pos(nspan);
    for (int64_t i = 0, j = 0; i < C;) {
      if (j < nspan && i == starts[j]) {
        mask_pos[j] = static_cast<int32_t>(tok.size());
        tok.push_back(tokens_.mask);
        i += lens[j++];
      } else {
        tok.push_back(chunk[i++]);
      }
    }
    const int64_t part_a = static_cast<int64_t>(tok.size());
    for (int64_t i = 0; i < part_a; ++i) pos.push_back(static_cast<int32_t>(i));
    tgt.assign(part_a, 0);  // next tokens, filled below
    loss.assign(part_a, 0.0f);
    // Part B, spans in shuffled order.
    std::vector<int64_t> order(nspan);
    std::iota(order.begin(), order.end(), 0);
    d.shuffle(order);
    for (int64_t j : order) {
      tok.push_back(tokens_.sop);
      for (int64_t i = starts[j]; i < starts[j] + lens[j]; ++i) {
        tok.push_back(chunk[i]);
        tgt.push_back(chunk[i]);
      }
      tgt.push_back(tokens_.eop);
      pos.insert(pos.end(), lens[j] + 1, mask_pos[j]);
      loss.insert(loss.end(), lens[j] + 1, 1.0f);
    }
    for (int64_t i = 0; i < part_a; ++i) tgt[i] = tok[i + 1];  // Part B is never empty
    // Into the slot: cut at its end, the rest stays padding.
    const int64_t used = std::min<int64_t>(slot, static_cast<int64_t>(tok.size()));
    const int64_t base = c * slot;
    std::copy_n(tok.begin(), used, out.tokens.begin() + base);
    std::copy_n(tgt.begin(), used, out.targets.begin() + base);
    std::copy_n(pos.begin(), used, out.position_ids.begin() + base);
    std::copy_n(loss.begin(), used, out.loss_mask.begin() + base);
    out.sep.push_back(static_cast<int32_t>(part_a));
    out.segment_lengths.push_back(static_cast<int32_t>(slot));
  }
}

}  // namespace glmrt
