// The training sections of a run config: `train`, `optimizer`, `data`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dtype.h"
#include "model/yaml_fields.h"

namespace glmrt {

enum class Precision { FP32, BF16, FP16 };
const char* precision_name(Precision p);

struct LossScaleConfig {  // dynamic loss scaling (fp16 only), GLM-130B's values by default
  double initial = 65536.0;
  int64_t window = 2000;    // steps without overflow before the scale doubles
  int64_t hysteresis = 2;   // overflows tolerated before the scale halves
  double min = 1.0;
};

struct TrainConfig {
  int64_t micro_batch_size = 1;
  int64_t global_batch_size = 8;
  int64_t steps = 100;
  Precision precision = Precision::FP32;
  uint64_t seed = 1234;
  double hidden_dropout = 0.0;
  double attention_dropout = 0.0;
  double embedding_grad_shrink = 1.0;
  bool recompute = false;
  std::string metrics = "run/metrics.jsonl";
  int64_t log_interval = 1;
  int64_t exit_interval = 0;     // stop (saving a checkpoint) when iteration % N == 0 (Megatron's)
  int64_t seq_length = 0;        // samples built from token files: tokens per sample
  int64_t eval_interval = 0;     // validation every N steps (0: never)
  int64_t eval_batches = 4;      // global batches per validation
  // Batch-size ramp-up (GLM130B.md §8): from rampup_batch_size, + rampup_increment every
  // rampup_samples / ((global − start) / increment) consumed samples, up to global_batch_size.
  int64_t rampup_batch_size = 0, rampup_increment = 0, rampup_samples = 0;
  LossScaleConfig loss_scale;
};

enum class LrDecay { Cosine, Linear, Constant };

struct OptimizerConfig {
  double lr = 1e-4, min_lr = 1e-5;
  int64_t warmup_steps = 0;
  std::optional<int64_t> decay_steps;  // default: train.steps
  LrDecay decay = LrDecay::Cosine;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, clip_grad = 1.0;
};

struct DataConfig {
  std::string samples;  // pre-built samples (JSON lines); relative to the config file
  // Token files (PREFIX.bin / PREFIX.idx from `glmrt preprocess`) with sampling weights; samples
  // are then built on the fly by the GLM sample builder (data/glm_sample_builder.h).
  std::vector<std::pair<double, std::string>> tokens;
  std::vector<double> split = {98, 2};  // train / validation shares of the raw windows
  YAML::Node glm;                        // the builder's knobs (parse_glm_builder_section)
};

struct CheckpointConfig {
  std::string save;       // folder of iter_NNNNNNN checkpoints ("" = none)
  int64_t interval = 0;   // save every N steps (0: only at the end and on SIGTERM/SIGUSR1)
  int64_t keep = 0;       // keep the newest K checkpoints (0: all)
  std::string load;       // resume from `latest` here ("" = start fresh)
  bool async = true;      // write in a background thread; commit when every rank is done
};

struct TokenizerConfig {
  std::string model;  // sentencepiece model; relative to the config file
};

TrainConfig parse_train_section(YamlFields& f);
OptimizerConfig parse_optimizer_section(YamlFields& f);
DataConfig parse_data_section(YamlFields& f, const std::string& config_dir);
TokenizerConfig parse_tokenizer_section(YamlFields& f, const std::string& config_dir);
CheckpointConfig parse_checkpoint_section(YamlFields& f);

// The learning rate of optimizer update t (1-based): linear warm-up lr·t/warmup_steps, then
// cosine, linear or constant decay from lr to min_lr over [warmup_steps, decay_steps].
double learning_rate(const OptimizerConfig& o, int64_t train_steps, int64_t t);

}  // namespace glmrt
