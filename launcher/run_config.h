// The whole YAML config of a run. Sections: `model` (required), `tokens`, `train`, `optimizer`,
// `data`, `parallel`. Unknown sections and
// keys are errors that name their key path.
#pragma once

#include <string>

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
};

RunConfig load_run_config(const std::string& path);

}  // namespace glmrt
