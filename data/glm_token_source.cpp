#include "data/glm_token_source.h"

#include <cmath>
#include <random>

namespace glmrt {

GlmTokenSource::GlmTokenSource(std::vector<std::pair<double, TokenFile>> files,
                               std::shared_ptr<const GlmSampleBuilder> builder,
                               std::vector<double> split, Split which, uint64_t shuffle_seed)
    : builder_(std::move(builder)) {
  GLMRT_CHECK(split.size() == 2, "GlmTokenSource: split needs two shares");
  const int64_t r = builder_->raw_length();
  const double valid_share = split[1] / (split[0] + split[1]);
  std::vector<double> weights;
  for (auto& [w, file] : files) {
    const int64_t windows = file.num_tokens() / r;
    FileSplit fs{file, {}};
    for (int64_t k = 0; k < windows; ++k) {
      // Window k validates when the running count of validation windows steps up at k.
      const bool valid = std::floor(static_cast<double>(k + 1) * valid_share) >
                         std::floor(static_cast<double>(k) * valid_share);
      if (valid == (which == Split::Validation)) fs.windows.push_back(k);
    }
    if (fs.windows.empty())
      throw ConfigError(file.prefix() + ": " + std::to_string(file.num_tokens()) + " tokens make " +
                        std::to_string(windows) + " window(s) of " + std::to_string(r) +
                        " raw tokens, none left for the " +
                        (which == Split::Train ? "training" : "validation") +
                        " split (data.split); add data or shorten train.seq_length");
    files_.push_back(fs);
    weights.push_back(w);
  }
  GLMRT_CHECK(!files_.empty(), "GlmTokenSource: no token files");
  // One pass over the split: as many samples as windows in all files, blended by weight.
  int64_t total = 0;
  double weight_sum = 0;
  for (size_t d = 0; d < files_.size(); ++d)
    total += static_cast<int64_t>(files_[d].windows.size()), weight_sum += weights[d];
  std::vector<int64_t> taken(files_.size(), 0);
  blend_.reserve(static_cast<size_t>(total));
  for (int64_t k = 0; k < total; ++k) {
    size_t best = 0;
    double best_gap = -1e300;
    for (size_t d = 0; d < files_.size(); ++d) {
      const double gap = weights[d] / weight_sum * static_cast<double>(k + 1) - static_cast<double>(taken[d]);
      if (gap > best_gap) best_gap = gap, best = d;
    }
    blend_.emplace_back(static_cast<int32_t>(best),
                        taken[best]++ % static_cast<int64_t>(files_[best].windows.size()));
  }
  // A fixed shuffle (Fisher-Yates on mt19937_64, whose sequence the standard defines): batches mix
  // every source, and every rank and every resumed run see the same order.
  std::mt19937_64 rng(shuffle_seed ^ (which == Split::Train ? 0x7261696eULL : 0x76616c69ULL));
  for (size_t k = blend_.size(); k > 1; --k) std::swap(blend_[k - 1], blend_[rng() % k]);
}

BuiltSample GlmTokenSource::build(int64_t index) const {
  const auto& [d, w] = blend_[static_cast<size_t>(index % size())];
  const FileSplit& fs = files_[static_cast<size_t>(d)];
  const int64_t r = builder_->raw_length();
  std::vector<int32_t> raw(static_cast<size_t>(r));
  fs.file.read(fs.windows[static_cast<size_t>(w)] * r, r, raw.data());
  return builder_->build(raw.data(), index);
}

std::vector<int64_t> target_counts(const SampleSource& samples, int64_t count, int64_t vocab_size) {
  std::vector<int64_t> counts(static_cast<size_t>(vocab_size), 0);
  for (int64_t i = 0; i < count; ++i) {
    const Sample s = samples.get(i);
    for (size_t t = 0; t < s.targets.size(); ++t)
      if (s.loss_mask[t] != 0 && s.targets[t] >= 0 && s.targets[t] < vocab_size)
        ++counts[static_cast<size_t>(s.targets[t])];
  }
  return counts;
}

TokenSources open_token_sources(const std::vector<std::pair<double, std::string>>& prefixes,
                                const std::vector<double>& split,
                                std::shared_ptr<const GlmSampleBuilder> builder, uint64_t seed) {
  std::vector<std::pair<double, TokenFile>> files;
  for (const auto& [w, prefix] : prefixes) files.emplace_back(w, TokenFile(prefix));
  TokenSources s;
  s.train = std::make_shared<GlmTokenSource>(files, builder, split, GlmTokenSource::Split::Train, seed);
  if (split[1] > 0)
    s.validation = std::make_shared<GlmTokenSource>(files, builder, split,
                                                    GlmTokenSource::Split::Validation, seed);
  return s;
}

double unigram_loss(const std::vector<int64_t>& counts, const SampleSource& samples, int64_t count,
                    int64_t micro_batch) {
  double total = 0;
  for (int64_t c : counts) total += static_cast<double>(c + 1);
  double sum = 0;
  int64_t batches = 0;
  for (int64_t b = 0; b + micro_batch <= count; b += micro_batch, ++batches) {
    double loss = 0, mask = 0;
    for (int64_t i = b; i < b + micro_batch; ++i) {
      const Sample s = samples.get(i);
      for (size_t t = 0; t < s.targets.size(); ++t) {
        if (s.loss_mask[t] == 0) continue;
        const size_t id = static_cast<size_t>(s.targets[t]);
        const double p = static_cast<double>((id < counts.size() ? counts[id] : 0) + 1) / total;
        loss += s.loss_mask[t] * -std::log(p);
        mask += s.loss_mask[t];
      }
    }
    sum += loss / mask;
  }
  return batches ? sum / static_cast<double>(batches) : 0.0;
}

}  // namespace glmrt
