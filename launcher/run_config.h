// The whole YAML config of a run. Sections: `model` (required), `tokens`, `train`, `optimizer`,
// `data`, `parallel`, `tokenizer`, `checkpoint`. Unknown sections and
// keys are errors that name their key path.
#pragma once

#include <string>
#include <vector>

#include "model/glm_config.h"
#include "parallel/parallel_config.h"
#include "train/train_config.h"

namespace glmrt {

struct RunConfig {
  std::string source;  // the file it was read from
  GlmConfig model;
  TrainConfig train;
  OptimizerConfig optimizer;
  DataConfig data;
  ParallelConfig parallel;
  TokenizerConfig tokenizer;
  CheckpointConfig checkpoint;
};

// Loads `path`, then applies `overrides` ("train.steps=100", "parallel.data=auto", values in YAML
// syntax) before validation; an override of an unknown key is an error like a misspelt key.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace glmrt
