#include "model/glm_model.h"

#include <cmath>

#include "kernels/ops.h"

namespace glmrt {

GlmModel::GlmModel(GlmConfig config, GlmParams params)
    : config_(std::move(config)), params_(std::move(params)) {
  RopeTables host = build_rope_tables(config_.head_dim(), config_.max_sequence_length,
                                      config_.rotary_base, config_.rotary_fp16_tables);
  rope_ = {host.cos.to(device()), host.sin.to(device())};
}

Tensor GlmModel::forward(const Batch& host_batch) {
  const Batch batch = host_batch.tokens.device() == device() ? host_batch : host_batch.to(device());
  const int64_t n = batch.batch * batch.seq, h = config_.hidden_size;
  Tensor x = Tensor::empty({n, h}, dtype(), device());
  embedding_forward(batch.tokens, params_.word_embeddings, 0, x);
  scratch_.allocate(config_, n, dtype(), device());
  for (int64_t i = 0; i < config_.num_layers; ++i)
    glm_layer_forward(config_, params_.layers[static_cast<size_t>(i)], rope_, batch, i,
                      StepContext{}, scratch_, x);
  Tensor y = Tensor::empty({n, h}, dtype(), device());
  layernorm_forward(x, params_.final_layernorm_weight, params_.final_layernorm_bias,
                    static_cast<float>(config_.layernorm_epsilon), y, nullptr, nullptr);
  Tensor logits = Tensor::empty({batch.batch, batch.seq, config_.vocab_size}, dtype(), device());
  linear_forward(y, params_.word_embeddings, nullptr, logits);  // tied output head, no bias
  return logits;
}

}  // namespace glmrt

namespace glmrt {

double GlmModel::forward_backward(const Batch& host_batch, const Tensor& targets,
                                  const Tensor& loss_mask, const TrainOptions& opt,
                                  GlmParams& grads) {
  const Batch batch = host_batch.tokens.device() == device() ? host_batch : host_batch.to(device());
  const int64_t n = batch.batch * batch.seq, h = config_.hidden_size, L = config_.num_layers;
  GLMRT_CHECK(targets.numel() == n && loss_mask.numel() == n, "forward_backward: targets ",
              targets.str(), " / loss_mask ", loss_mask.str(), " for ", n, " tokens");
  StepContext ctx = opt.ctx;
  ctx.training = true;
  const DType dt = dtype();
  const Device dev = device();
  const float egs = opt.embedding_grad_shrink;

  // ---- forward, keeping what the backward needs
  Tensor x = Tensor::empty({n, h}, dt, dev);
  embedding_forward(batch.tokens, params_.word_embeddings, 0, x);
  const DropoutSpec emb_drop = ctx.hidden(-1, DropoutSite::Embedding, batch.seq, h);
  dropout_apply(x, emb_drop);
  if (opt.recompute) {
    layer_inputs_.resize(static_cast<size_t>(L));
    scratch_.allocate(config_, n, dt, dev);
  } else {
    saved_.resize(static_cast<size_t>(L));
  }
  for (int64_t i = 0; i < L; ++i) {
    const size_t li = static_cast<size_t>(i);
    if (opt.recompute) {
      if (!layer_inputs_[li].defined() || layer_inputs_[li].rows() != n ||
          layer_inputs_[li].dtype() != dt)
        layer_inputs_[li] = Tensor::empty({n, h}, dt, dev);
      layer_inputs_[li].copy_from(x);
    } else {
      saved_[li].allocate(config_, n, dt, dev);
    }
    glm_layer_forward(config_, params_.layers[li], rope_, batch, i, ctx,
                      opt.recompute ? scratch_ : saved_[li], x);
  }
  const DType stat = dt == DType::F64 ? DType::F64 : DType::F32;
  Tensor y = Tensor::empty({n, h}, dt, dev);
  Tensor mean = Tensor::empty({n}, stat, dev), rstd = Tensor::empty({n}, stat, dev);
  const float eps = static_cast<float>(config_.layernorm_epsilon);
  layernorm_forward(x, params_.final_layernorm_weight, params_.final_layernorm_bias, eps, y,
                    &mean, &rstd);
  Tensor logits = Tensor::empty({n, config_.vocab_size}, dt, dev);
  linear_forward(y, params_.word_embeddings, nullptr, logits);

  // ---- loss: fp32 cross-entropy, Σ loss·mask / Σ mask
  const Tensor tgt = targets.device() == dev ? targets : targets.to(dev);
  Tensor row_max = Tensor::empty({n}, stat, dev), sum_exp = Tensor::empty({n}, stat, dev);
  Tensor target_logit = Tensor::empty({n}, stat, dev);
  cross_entropy_max(logits, row_max);
  cross_entropy_sums(logits, tgt, 0, row_max, sum_exp, target_logit);
  const Tensor hm = row_max.to(Device::cpu()), hs = sum_exp.to(Device::cpu());
  const Tensor ht = target_logit.to(Device::cpu());
  const Tensor mask = loss_mask.device().is_cpu() ? loss_mask : loss_mask.to(Device::cpu());
  double mask_sum = 0, loss_sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double w = mask.item(t);
    if (w == 0) continue;
    mask_sum += w;
    loss_sum += w * (std::log(hs.item(t)) + hm.item(t) - ht.item(t));
  }
  GLMRT_CHECK(mask_sum > 0, "forward_backward: the micro-batch has no token with a loss");
  const double loss = loss_sum / mask_sum;

  // ---- backward
  Tensor dloss_host = Tensor::empty({n}, DType::F64);
  for (int64_t t = 0; t < n; ++t)
    dloss_host.data_as<double>()[t] = static_cast<double>(opt.grad_scale) * mask.item(t) / mask_sum;
  const Tensor dloss = dloss_host.to(stat).to(dev);
  Tensor& dlogits = logits;  // the logits are not needed any more: reuse their memory
  cross_entropy_backward(logits, tgt, 0, row_max, sum_exp, dloss, dlogits);
  Tensor dy = Tensor::empty({n, h}, dt, dev);
  gemm(dlogits, false, params_.word_embeddings, false, dy, 1.0f, 0.0f);
  gemm(dlogits, true, y, false, grads.word_embeddings, egs, 1.0f);  // tied head, EGS α
  Tensor dx = Tensor::empty({n, h}, dt, dev);
  layernorm_backward(x, params_.final_layernorm_weight, mean, rstd, dy, dx,
                     &grads.final_layernorm_weight, &grads.final_layernorm_bias);
  work_.allocate(config_, n, dt, dev);
  for (int64_t i = L - 1; i >= 0; --i) {
    const size_t li = static_cast<size_t>(i);
    if (opt.recompute) {
      x.copy_from(layer_inputs_[li]);
      glm_layer_forward(config_, params_.layers[li], rope_, batch, i, ctx, scratch_, x);
    }
    glm_layer_backward(config_, params_.layers[li], rope_, batch, i, ctx,
                       opt.recompute ? scratch_ : saved_[li], work_, dx, dx, grads.layers[li]);
  }
  dropout_apply(dx, emb_drop);
  if (egs != 1.0f) scale_inplace(dx, egs);
  embedding_backward(batch.tokens, dx, 0, grads.word_embeddings);
  return loss;
}

}  // namespace glmrt
