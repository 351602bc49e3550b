#include "inference/strategies.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "kernels/error.h"
#include "kernels/philox.h"

namespace glmrt {

namespace {

constexpr double kFiltered = -65504.0;  // the released code's "removed" logit

// Uniform in (0, 1] for (seed, blank, counter).
double draw_uniform(uint64_t seed, int64_t blank, uint64_t counter) {
  uint32_t w[4];
  Philox::generate(seed, static_cast<uint64_t>(blank), counter, w);
  return Philox::to_unit(w[0]);
}

// The smallest index whose cumulative weight reaches u · Σ weights (float64, index order).
int64_t pick_by_weight(const std::vector<double>& w, double u) {
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  const double target = u * total;
  double acc = 0;
  int64_t last_positive = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] > 0) last_positive = static_cast<int64_t>(i);
    acc += w[i];
    if (w[i] > 0 && acc >= target) return static_cast<int64_t>(i);
  }
  return last_positive;
}

// exp(z - max z), unnormalised.
std::vector<double> softmax_weights(const std::vector<double>& z) {
  const double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> w(z.size());
  for (size_t i = 0; i < z.size(); ++i) w[i] = std::exp(z[i] - mx);
  return w;
}

// log Σ exp(z[i]) over n values, in double (shifted by the largest).
template <class T>
double log_sum_exp(const T* z, size_t n) {
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(z[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(z[i]) - mx);
  return mx + std::log(sum);
}

void ban_end_tokens(std::vector<double>& z, const TokenIds& ids) {
  for (int32_t t : {ids.eop, ids.eos})
    if (t >= 0 && t < static_cast<int32_t>(z.size())) z[static_cast<size_t>(t)] = kFiltered;
}

}  // namespace

int32_t choose_token(const float* logits, int64_t vocab, const GenerationParams& p,
                     const TokenIds& ids, int64_t blank, int64_t step,
                     const std::vector<int32_t>& generated) {
  const bool ban = step < p.min_gen_length;
  std::vector<double> z(logits, logits + vocab);
  for (const auto& [t, bias] : p.logit_bias) {
    GLMRT_CHECK(t >= 0 && t < vocab, "choose_token: logit_bias token ", t, " outside the vocabulary");
    z[static_cast<size_t>(t)] += bias;
  }
  if (p.presence_penalty != 0 || p.frequency_penalty != 0) {
    std::map<int32_t, int64_t> count;
    for (int32_t t : generated)
      if (t >= 0 && t < vocab) ++count[t];
    for (const auto& [t, c] : count)
      z[static_cast<size_t>(t)] -= p.presence_penalty + p.frequency_penalty * static_cast<double>(c);
  }
  if (p.strategy == Strategy::Greedy) {
    if (ban) ban_end_tokens(z, ids);
    return static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin());
  }
  GLMRT_CHECK(p.strategy == Strategy::Sample, "choose_token: not a sampling strategy");
  for (double& x : z) x /= p.temperature;
  if (ban) ban_end_tokens(z, ids);
  if (p.top_k > 0 && p.top_k < vocab) {
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (p.top_k - 1), sorted.end(), std::greater<>());
    const double kth = sorted[static_cast<size_t>(p.top_k - 1)];
    for (double& x : z)
      if (x < kth) x = kFiltered;
  }
  if (p.top_p > 0.0 && p.top_p < 1.0) {
    std::vector<int64_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return z[a] > z[b]; });
    std::vector<double> sorted(order.size());
    for (size_t i = 0; i < order.size(); ++i) sorted[i] = z[static_cast<size_t>(order[i])];
    const std::vector<double> w = softmax_weights(sorted);
    const double total = std::accumulate(w.begin(), w.end(), 0.0);
    double cum = 0;
    std::vector<int64_t> removed;
    for (size_t i = 0; i < order.size(); ++i) {
      if (i >= 1 && cum > p.top_p) removed.push_back(order[i]);
      cum += w[i] / total;
    }
    for (int64_t r : removed) z[static_cast<size_t>(r)] = kFiltered;
  }
  const double u = draw_uniform(p.seed, blank, static_cast<uint64_t>(step));
  return static_cast<int32_t>(pick_by_weight(softmax_weights(z), u));
}

TokenLogprobs token_logprobs(const float* logits, int64_t vocab, int32_t chosen, int64_t top) {
  GLMRT_CHECK(chosen >= 0 && chosen < vocab, "token_logprobs: token ", chosen, " outside the vocabulary");
  const double log_z = log_sum_exp(logits, static_cast<size_t>(vocab));
  TokenLogprobs r;
  r.token = chosen;
  r.logprob = static_cast<float>(static_cast<double>(logits[chosen]) - log_z);
  const int64_t n = std::min(std::max<int64_t>(top, 0), vocab);
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t i = 0; i < n; ++i)
    r.top.emplace_back(order[static_cast<size_t>(i)],
                       static_cast<float>(static_cast<double>(logits[order[static_cast<size_t>(i)]]) - log_z));
  return r;
}

BeamSearch::BeamSearch(const GenerationParams& p, const TokenIds& ids, std::vector<int32_t> context,
                       int64_t blank)
    : p_(p), ids_(ids), context_length_(context.size()), blank_(blank) {
  beams_.push_back({std::move(context), 0.0, {}});
}

double BeamSearch::penalized(double score, size_t length) const {
  return score / std::pow((5.0 + static_cast<double>(length)) / 6.0, p_.length_penalty);
}

void BeamSearch::add_end_beam(double score, std::vector<int32_t> full) {
  const double s = penalized(score, full.size());
  size_t i = 0;  // before the first end beam whose penalized score is <= s
  while (i < end_beams_.size() && end_beams_[i].first > s) ++i;
  end_beams_.insert(end_beams_.begin() + static_cast<std::ptrdiff_t>(i), {s, std::move(full)});
  if (end_beams_.size() > static_cast<size_t>(p_.num_beams)) end_beams_.resize(static_cast<size_t>(p_.num_beams));
}

BeamSearch::Step BeamSearch::step(const std::vector<const float*>& logits, int64_t vocab) {
  GLMRT_CHECK(logits.size() == beams_.size(), "BeamSearch: ", logits.size(), " logit rows for ",
              beams_.size(), " beams");
  const size_t rows = beams_.size(), V = static_cast<size_t>(vocab);
  const size_t seq_len = beams_[0].full.size();
  const int64_t N = p_.no_repeat_ngram_size;
  // 1-2. Candidate scores.
  std::vector<double> cand(rows * V);
  for (size_t b = 0; b < rows; ++b) {
    std::vector<double> z(logits[b], logits[b] + vocab);
    if (generated_ < p_.min_gen_length) ban_end_tokens(z, ids_);
    if (N > 0 && seq_len > static_cast<size_t>(N)) {
      const std::vector<int32_t> prefix(beams_[b].full.end() - (N - 1), beams_[b].full.end());
      const auto it = beams_[b].bans.find(prefix);
      if (it != beams_[b].bans.end())
        for (int32_t t : it->second) z[static_cast<size_t>(t)] = kFiltered;
    }
    const double lse = log_sum_exp(z.data(), z.size());
    for (size_t t = 0; t < V; ++t) cand[b * V + t] = z[t] - lse + beams_[b].score;
  }
  // 3. K candidates.
  const size_t K = std::min(rows * V, static_cast<size_t>(3 * p_.num_beams));
  std::vector<int64_t> picked;
  if (p_.deterministic) {
    std::vector<int64_t> idx(cand.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(K), idx.end(),
                      [&](int64_t a, int64_t b) { return cand[a] > cand[b] || (cand[a] == cand[b] && a < b); });
    picked.assign(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(K));
  } else {
    std::vector<double> w = softmax_weights(cand);
    for (size_t r = 0; r < K; ++r) {
      const int64_t i = pick_by_weight(w, draw_uniform(p_.seed, blank_, static_cast<uint64_t>(generated_) * K + r));
      if (i < 0) break;
      picked.push_back(i);
      w[static_cast<size_t>(i)] = 0;
    }
  }
  // 4. Sorted by score; end beams or continuing beams.
  std::stable_sort(picked.begin(), picked.end(), [&](int64_t a, int64_t b) { return cand[a] > cand[b]; });
  std::vector<Beam> next;
  Step out;
  for (int64_t c : picked) {
    const size_t parent = static_cast<size_t>(c) / V;
    const int32_t token = static_cast<int32_t>(static_cast<size_t>(c) % V);
    std::vector<int32_t> full = beams_[parent].full;
    full.push_back(token);
    if (!done_ && is_end(token)) {
      add_end_beam(cand[static_cast<size_t>(c)], std::move(full));
    } else if (static_cast<int64_t>(next.size()) < p_.num_beams) {
      Beam b{std::move(full), cand[static_cast<size_t>(c)], {}};
      if (N > 0) {
        b.bans = beams_[parent].bans;
        const auto& pf = beams_[parent].full;
        const std::vector<int32_t> prefix(pf.end() - std::min<int64_t>(N - 1, static_cast<int64_t>(pf.size())), pf.end());
        b.bans[prefix].push_back(token);
      }
      next.push_back(std::move(b));
      out.parents.push_back(static_cast<int32_t>(parent));
      out.tokens.push_back(token);
    } else {
      break;
    }
  }
  beams_ = std::move(next);
  ++generated_;
  // 5. Done when no continuing beam can beat the worst kept end beam.
  if (static_cast<int64_t>(end_beams_.size()) == p_.num_beams && !beams_.empty()) {
    double best = beams_[0].score;
    for (const Beam& b : beams_) best = std::max(best, b.score);
    if (end_beams_.back().first >= penalized(best, seq_len + 1)) done_ = true;
  }
  return out;
}

std::vector<int32_t> BeamSearch::finish(bool& stopped) {
  if (!done_)
    for (const Beam& b : beams_) add_end_beam(b.score, b.full);
  std::vector<int32_t> span;
  stopped = false;
  if (end_beams_.empty()) return span;
  const std::vector<int32_t>& best = end_beams_[0].second;
  span.assign(best.begin() + static_cast<std::ptrdiff_t>(std::min(context_length_, best.size())), best.end());
  if (!span.empty() && is_end(span.back())) {
    span.pop_back();
    stopped = true;
  }
  return span;
}

}  // namespace glmrt
