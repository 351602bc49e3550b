// The training loop of one rank: the pipeline schedule (1F1B) over this rank's micro-batches,
// gradient reduction (tied embedding over the embedding group, data parallel in buckets or
// ZeRO-1 reduce-scatter), global-norm clipping, AdamW on fp32 master weights, the LR schedule
// and dynamic loss scaling (GLM130B.md §8). The step loss is the mean over all micro-batches of
// the global batch of Σ loss·mask / Σ mask. Without process groups it is a single-rank trainer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "data/sample_source.h"
#include "checkpoint/safetensors.h"
#include "data/samples.h"
#include "model/glm_model.h"
#include "parallel/process_groups.h"
#include "train/loss_scaler.h"
#include "train/train_config.h"

namespace glmrt {

struct StepMetrics {
  int64_t iteration = 0;
  double loss = 0, grad_norm = 0, lr = 0, loss_scale = 1;
  bool skipped = false;
  int64_t consumed_samples = 0, tokens = 0;  // tokens of the global batch
  double seconds = 0;
};

struct TrainerOptions {
  ProcessGroups* groups = nullptr;  // null: a single rank
  bool zero = false;                // ZeRO-1 over the data-parallel group
  int64_t bucket_elements = 16 << 20;
};

class Trainer {
 public:
  // `model` holds this rank's compute weights (F32, or 16-bit for bf16/fp16); the trainer keeps
  // fp32 master weights and Adam moments beside it (1/D of them per rank under ZeRO-1).
  Trainer(GlmModel& model, const TrainConfig& train, const OptimizerConfig& optimizer,
          std::shared_ptr<const SampleSource> samples, TrainerOptions options = {},
          std::shared_ptr<const SampleSource> validation = nullptr);
  Trainer(GlmModel& model, const TrainConfig& train, const OptimizerConfig& optimizer,
          std::vector<Sample> samples, TrainerOptions options = {})
      : Trainer(model, train, optimizer, std::make_shared<SampleList>(std::move(samples)), options) {}

  // Runs one optimizer step on the next global batch (cycling through the samples).
  StepMetrics step();
  // Mean loss over train.eval_batches global batches of the validation samples (forward only).
  double evaluate();
  bool has_validation() const { return validation_ != nullptr; }
  // The global batch size of the next step (batch-size ramp-up).
  int64_t current_global_batch() const;

  // Gradients of this rank's parameters after the last step's reduction (without ZeRO).
  const GlmParams& grads() const { return grads_; }
  // Under ZeRO: this rank's reduced slice [zero_begin, zero_begin + numel) of grads().flat().
  const Tensor& zero_grad_shard() const { return grad_shard_; }
  int64_t zero_begin() const { return shard_begin_; }
  const GlmParams& master() const { return master_is_model_ ? model_.params() : master_; }
  int64_t iteration() const { return iteration_; }
  int64_t micro_batches() const { return micro_batches_; }

  // ---- Checkpointing
  struct State {
    int64_t iteration = 0, updates = 0, consumed_samples = 0;
    LossScaler::State loss_scale{1.0, 0, 0};
  };
  State state() const { return {iteration_, updates_, consumed_, scaler_.state()}; }
  void restore(const State& s);
  // This rank's fp32 master weights and Adam moments, one host tensor per parameter it holds,
  // named NAME.master, NAME.exp_avg, NAME.exp_avg_sq. Collective over the data-parallel group
  // under ZeRO-1 (the shards are all-gathered).
  NamedTensors optimizer_state();
  // The reverse: `get(name)` returns the full local tensor of NAME.master / .exp_avg / .exp_avg_sq.
  void load_optimizer_state(const std::function<Tensor(const std::string&)>& get);

 private:
  void reduce_gradients();
  void optimizer_step(StepMetrics& m);
  double grad_sum_squares(int64_t begin, int64_t end) const;  // of grads flat range, deduplicated
  bool counts(size_t param) const;  // whether this rank counts param's gradient in the norm

  GlmModel& model_;
  TrainConfig train_;
  OptimizerConfig opt_;
  std::shared_ptr<const SampleSource> samples_, validation_;
  TrainerOptions options_;
  int tp_rank_ = 0, dp_rank_ = 0, dp_size_ = 1, stage_ = 0, stages_ = 1;
  int64_t micro_batches_ = 1, per_dp_ = 1;
  GlmParams grads_, master_, exp_avg_, exp_avg_sq_;  // without ZeRO
  Tensor master_shard_, exp_avg_shard_, exp_avg_sq_shard_, grad_shard_;  // with ZeRO
  int64_t shard_begin_ = 0;
  bool master_is_model_ = false;
  LossScaler scaler_;
  int64_t iteration_ = 0, updates_ = 0, consumed_ = 0;
};

}  // namespace glmrt
