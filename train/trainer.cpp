#include "train/trainer.h"

#include <chrono>
#include <cmath>

#include "kernels/ops.h"

namespace glmrt {

Trainer::Trainer(GlmModel& model, const TrainConfig& train, const OptimizerConfig& optimizer,
                 std::vector<Sample> samples)
    : model_(model), train_(train), opt_(optimizer), samples_(std::move(samples)),
      master_is_model_(model.dtype() == DType::F32),
      scaler_(train.loss_scale, train.precision == Precision::FP16) {
  const GlmConfig& c = model.config();
  const Device dev = model.device();
  grads_ = GlmParams::allocate(c, DType::F32, dev);
  exp_avg_ = GlmParams::allocate(c, DType::F32, dev);
  exp_avg_sq_ = GlmParams::allocate(c, DType::F32, dev);
  if (!master_is_model_) {
    master_ = GlmParams::allocate(c, DType::F32, dev);
    Tensor dst = master_.flat();
    convert(model.params().flat(), dst);
  }
}

StepMetrics Trainer::step() {
  const auto start = std::chrono::steady_clock::now();
  const GlmConfig& c = model_.config();
  const int64_t micro_batches = train_.global_batch_size / train_.micro_batch_size;
  StepMetrics m;
  m.iteration = ++iteration_;
  m.loss_scale = scaler_.scale();
  grads_.flat().zero_();

  GlmModel::TrainOptions to;
  to.ctx.hidden_dropout = static_cast<float>(train_.hidden_dropout);
  to.ctx.attention_dropout = static_cast<float>(train_.attention_dropout);
  to.ctx.seed = train_.seed;
  to.ctx.step = static_cast<uint64_t>(iteration_);
  to.embedding_grad_shrink = static_cast<float>(train_.embedding_grad_shrink);
  to.grad_scale = static_cast<float>(scaler_.scale() / static_cast<double>(micro_batches));
  to.recompute = train_.recompute;

  double loss_sum = 0;
  for (int64_t j = 0; j < micro_batches; ++j) {
    std::vector<const Sample*> rows;
    for (int64_t r = 0; r < train_.micro_batch_size; ++r) {
      rows.push_back(&samples_[static_cast<size_t>(next_sample_)]);
      next_sample_ = (next_sample_ + 1) % static_cast<int64_t>(samples_.size());
    }
    const MicroBatch mb = make_micro_batch(rows, c);
    to.ctx.row_offset = j * train_.micro_batch_size;
    loss_sum += model_.forward_backward(mb.batch, mb.targets, mb.loss_mask, to, grads_);
    m.tokens += mb.batch.batch * mb.batch.seq;
  }
  m.loss = loss_sum / static_cast<double>(micro_batches);
  consumed_ += train_.global_batch_size;
  m.consumed_samples = consumed_;

  // Global gradient norm of the unscaled gradients; inf/NaN means an overflow.
  double sq = 0;
  for (size_t i = 0; i < grads_.size(); ++i) sq += sum_squares(grads_.tensor(i));
  // Each micro-batch added grad_scale × ∇loss_j, so the gradients hold total_scale × ∇(mean loss).
  const double inv_scale = 1.0 / (static_cast<double>(to.grad_scale) * static_cast<double>(micro_batches));
  m.grad_norm = std::sqrt(sq) * inv_scale;
  const bool overflow = !std::isfinite(sq);
  scaler_.update(overflow);
  if (overflow) {
    m.skipped = true;
    m.lr = learning_rate(opt_, train_.steps, updates_ + 1);
  } else {
    ++updates_;
    m.lr = learning_rate(opt_, train_.steps, updates_);
    double coef = inv_scale;  // unscale, then clip (torch clip_grad_norm_ semantics)
    if (opt_.clip_grad > 0) {
      const double clip = opt_.clip_grad / (m.grad_norm + 1e-6);
      if (clip < 1.0) coef *= clip;
    }
    GlmParams& master = master_is_model_ ? model_.params() : master_;
    for (size_t i = 0; i < grads_.size(); ++i) {
      const double wd = master.specs()[i].weight_decay ? opt_.weight_decay : 0.0;
      adamw_update(master.tensor(i), grads_.tensor(i), exp_avg_.tensor(i), exp_avg_sq_.tensor(i),
                   static_cast<float>(m.lr), static_cast<float>(opt_.beta1),
                   static_cast<float>(opt_.beta2), static_cast<float>(opt_.eps),
                   static_cast<float>(wd), updates_, static_cast<float>(coef));
    }
    if (!master_is_model_) {
      Tensor dst = model_.params().flat();
      convert(master_.flat(), dst);
    }
  }
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

}  // namespace glmrt
