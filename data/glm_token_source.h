// Samples built on the fly from token files (data.tokens) by the GLM blank-infilling builder.
// Each file's token stream (documents separated by eod) is cut into consecutive raw windows of
// builder.raw_length() tokens; a share split[1] / (split[0] + split[1]) of them, spread evenly
// through each file (so a corpus ordered by source still validates on all of it), validates and
// the rest trains. Several files are blended by weight with Megatron's BlendableDataset rule
// (sample k goes to the file furthest below its weighted share), then the order is shuffled with
// a fixed seed. Sample i is built from its window with sample index i, so a later epoch masks the
// same text differently and a resumed run rebuilds exactly the samples it would have seen.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/glm_sample_builder.h"
#include "data/sample_source.h"
#include "data/token_file.h"

namespace glmrt {

class GlmTokenSource : public SampleSource {
 public:
  enum class Split { Train, Validation };
  // files: (weight, token file). Throws ConfigError when a file has no window for the split.
  GlmTokenSource(std::vector<std::pair<double, TokenFile>> files,
                 std::shared_ptr<const GlmSampleBuilder> builder, std::vector<double> split,
                 Split which, uint64_t shuffle_seed);

  int64_t size() const override { return static_cast<int64_t>(blend_.size()); }
  Sample get(int64_t index) const override { return build(index).sample; }
  int64_t seq_length() const override { return builder_->seq_length(); }
  BuiltSample build(int64_t index) const;

 private:
  struct FileSplit {
    TokenFile file;
    std::vector<int64_t> windows;  // this split's window indices in the file
  };
  std::vector<FileSplit> files_;
  std::shared_ptr<const GlmSampleBuilder> builder_;
  std::vector<std::pair<int32_t, int64_t>> blend_;  // sample k → (file, window within its split)
};

// Both splits of data.tokens for a run (validation null when split[1] is 0).
struct TokenSources {
  std::shared_ptr<GlmTokenSource> train, validation;
};
TokenSources open_token_sources(const std::vector<std::pair<double, std::string>>& prefixes,
                                const std::vector<double>& split,
                                std::shared_ptr<const GlmSampleBuilder> builder, uint64_t seed);

// How often each id is a loss-masked target in samples [0, count) of `samples` (the unigram
// model of what the model is trained to predict, eop included).
std::vector<int64_t> target_counts(const SampleSource& samples, int64_t count, int64_t vocab_size);

// Cross-entropy of a unigram model (token frequencies of `counts`, add-one smoothed) on the
// loss-masked targets of samples [0, count) of `samples`, aggregated like the model's loss
// (per micro-batch of `micro_batch` rows Σ loss·mask / Σ mask, then the mean).
double unigram_loss(const std::vector<int64_t>& counts, const SampleSource& samples, int64_t count,
                    int64_t micro_batch);

}  // namespace glmrt
