// Where a command's model weights come from: --weights (a full TP=1 weight file) or --load (the
// latest checkpoint in a folder, any layout). Opened and checked before the process groups are
// built, so a bad path fails fast; loaded into this rank's shard afterwards (resharding a
// checkpoint of another layout on load).
#pragma once

#include <memory>
#include <string>

#include "checkpoint/safetensors.h"
#include "launcher/options.h"
#include "model/parameters.h"
#include "train/checkpointing.h"

namespace glmrt {

class ModelSource {
 public:
  // Throws ConfigError unless exactly one of --weights and --load is given.
  ModelSource(const po::variables_map& vm, const GlmConfig& config);
  void load(const GlmConfig& config, GlmParams& params) const;
  // What find_checkpoint had to say (e.g. a damaged newest checkpoint skipped); may be empty.
  const std::string& note() const { return note_; }
  // A pre-quantized checkpoint's bit width (glmrt quantize); 0 for full-precision weights.
  int weight_bits() const { return checkpoint_ ? checkpoint_->weight_bits : 0; }
  // The weight file or the checkpoint folder being loaded.
  std::string path() const { return weights_ ? weights_->path() : checkpoint_->path; }

 private:
  std::unique_ptr<SafetensorsReader> weights_;
  std::unique_ptr<CheckpointManifest> checkpoint_;
  std::string note_;
};

}  // namespace glmrt
