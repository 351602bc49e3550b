// The training data of a run: pre-built samples (data.samples) or GLM samples built on the fly
// from token files (data.tokens, train.seq_length, data.glm, data.split).
#pragma once

#include <memory>

#include "data/glm_token_source.h"
#include "data/sample_source.h"
#include "launcher/run_config.h"

namespace glmrt {

struct TrainingData {
  std::shared_ptr<const SampleSource> train, validation;  // validation may be null
  std::shared_ptr<const GlmTokenSource> train_tokens;     // set when built from token files
  std::string description;
};

TrainingData open_training_data(const RunConfig& rc);

// The GLM sample builder of a run (train.seq_length, data.glm, train.seed).
std::shared_ptr<const GlmSampleBuilder> make_sample_builder(const RunConfig& rc);

}  // namespace glmrt
