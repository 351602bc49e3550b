// Where training samples come from: pre-built samples (data.samples, JSON lines) or samples built
// on the fly from token files (data.tokens) by the GLM blank-infilling builder. Sample i is a pure
// function of i, so every rank sees the same data and a resumed run sees exactly what it would
// have seen.
#pragma once

#include <cstdint>
#include <vector>

#include "data/samples.h"

namespace glmrt {

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t size() const = 0;        // distinct samples; get() cycles past the end
  virtual Sample get(int64_t index) const = 0;
  virtual int64_t seq_length() const = 0;  // tokens per sample
};

// Pre-built samples held in memory.
class SampleList : public SampleSource {
 public:
  explicit SampleList(std::vector<Sample> samples);
  int64_t size() const override { return static_cast<int64_t>(samples_.size()); }
  Sample get(int64_t index) const override { return samples_[static_cast<size_t>(index % size())]; }
  int64_t seq_length() const override { return static_cast<int64_t>(samples_.front().tokens.size()); }

 private:
  std::vector<Sample> samples_;
};

}  // namespace glmrt
