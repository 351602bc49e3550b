#include "launcher/data_setup.h"

namespace glmrt {

std::shared_ptr<const GlmSampleBuilder> make_sample_builder(const RunConfig& rc) {
  if (rc.train.seq_length <= 0)
    throw ConfigError(rc.source + ": train.seq_length: set the sample length to build samples from data.tokens");
  if (rc.train.seq_length > rc.model.max_sequence_length)
    throw ConfigError(rc.source + ": train.seq_length " + std::to_string(rc.train.seq_length) +
                      " exceeds model.max_sequence_length " + std::to_string(rc.model.max_sequence_length));
  YamlFields glm(rc.data.glm, "data.glm", rc.source);
  return std::make_shared<GlmSampleBuilder>(rc.model.tokens, rc.train.seq_length,
                                            parse_glm_builder_section(glm), rc.train.seed);
}

TrainingData open_training_data(const RunConfig& rc) {
  TrainingData d;
  if (!rc.data.samples.empty()) {
    d.train = std::make_shared<SampleList>(read_samples_file(rc.data.samples, rc.model));
    d.description = rc.data.samples + " (" + std::to_string(d.train->size()) + " pre-built samples)";
    return d;
  }
  if (rc.data.tokens.empty())
    throw ConfigError(rc.source + ": data: no training data configured (data.samples or data.tokens)");
  TokenSources s = open_token_sources(rc.data.tokens, rc.data.split, make_sample_builder(rc), rc.train.seed);
  d.train = s.train;
  d.train_tokens = s.train;
  d.validation = s.validation;
  d.description = std::to_string(rc.data.tokens.size()) + " token file(s): " +
                  std::to_string(s.train->size()) + " training" +
                  (s.validation ? " and " + std::to_string(s.validation->size()) + " validation" : "") +
                  " windows of " + std::to_string(s.train->seq_length()) + "-token GLM samples";
  return d;
}

}  // namespace glmrt
