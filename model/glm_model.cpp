#include "model/glm_model.h"

#include <cmath>

#include "kernels/ops.h"

namespace glmrt {

GlmModel::GlmModel(GlmConfig config, GlmParams params, TensorParallel tp)
    : config_(std::move(config)), params_(std::move(params)), tp_(tp) {
  GLMRT_CHECK(tp_.size == params_.shard().tp_size && tp_.rank == params_.shard().tp_rank,
              "GlmModel: tensor-parallel rank ", tp_.rank, "/", tp_.size, " but params of shard ",
              params_.shard().tp_rank, "/", params_.shard().tp_size);
  RopeTables host = build_rope_tables(config_.head_dim(), config_.max_sequence_length,
                                      config_.rotary_base, config_.rotary_fp16_tables);
  rope_ = {host.cos.to(device()), host.sin.to(device())};
}

Tensor GlmModel::embed(const Batch& batch, const DropoutSpec& dropout) {
  const int64_t n = batch.batch * batch.seq;
  Tensor x = Tensor::empty({n, config_.hidden_size}, dtype(), device());
  embedding_forward(batch.tokens, params_.word_embeddings, vocab_start(), x);
  tp_.all_reduce(x);  // vocab-parallel embedding: each rank contributed its vocabulary range
  dropout_apply(x, dropout);
  return x;
}

Tensor GlmModel::head_logits(const Tensor& y, int64_t n) {
  // Tied output head: column-parallel over the vocabulary, no bias, never gathered.
  Tensor logits = Tensor::empty({n, config_.vocab_size / tp_.size}, dtype(), device());
  linear_forward(y, params_.word_embeddings, nullptr, logits);
  return logits;
}

Tensor GlmModel::forward_stage(const Batch& host_batch, const Tensor& input) {
  const Batch batch = host_batch.tokens.device() == device() ? host_batch : host_batch.to(device());
  const int64_t n = batch.batch * batch.seq, h = config_.hidden_size;
  Tensor x;
  if (shard().first_stage) {
    x = embed(batch, DropoutSpec{});
  } else {
    GLMRT_CHECK(input.defined() && input.rows() == n && input.cols() == h, "forward_stage: input ",
                input.defined() ? input.str() : "undefined", " for ", n, " tokens");
    x = input.clone();
  }
  scratch_.allocate(config_, tp_.size, n, dtype(), device());
  for (size_t i = 0; i < params_.layers.size(); ++i)
    glm_layer_forward(config_, params_.layers[i], rope_, tp_, batch,
                      shard().first_layer + static_cast<int64_t>(i), StepContext{}, scratch_, x);
  if (!shard().last_stage) return x;
  Tensor y = Tensor::empty({n, h}, dtype(), device());
  layernorm_forward(x, params_.final_layernorm_weight, params_.final_layernorm_bias,
                    static_cast<float>(config_.layernorm_epsilon), y, nullptr, nullptr);
  return head_logits(y, n).view({batch.batch, batch.seq, config_.vocab_size / tp_.size});
}

Tensor GlmModel::forward_cached(const CachedBatch& host_batch, const Tensor& input,
                                KvCache& cache) {
  const CachedBatch b = host_batch.tokens.device() == device() ? host_batch : host_batch.to(device());
  const int64_t n = b.tokens_count(), h = config_.hidden_size;
  GLMRT_CHECK(cache.k.size() == params_.layers.size(), "forward_cached: a cache of ",
              cache.k.size(), " layers for a stage of ", params_.layers.size());
  Batch batch;  // what the layers read besides the cache: positions (RoPE)
  batch.batch = 1;
  batch.seq = n;
  batch.tokens = b.tokens;
  batch.position_ids = b.position_ids;
  Tensor x;
  if (shard().first_stage) {
    x = Tensor::empty({n, h}, dtype(), device());
    embedding_forward(b.tokens, params_.word_embeddings, vocab_start(), x);
    tp_.all_reduce(x);
  } else {
    GLMRT_CHECK(input.defined() && input.rows() == n && input.cols() == h, "forward_cached: input ",
                input.defined() ? input.str() : "undefined", " for ", n, " tokens");
    x = input.clone();
  }
  scratch_.allocate(config_, tp_.size, n, dtype(), device());
  for (size_t i = 0; i < params_.layers.size(); ++i) {
    const CachedAttention cached{&b.token_index, &b.table, &cache.k[i], &cache.v[i]};
    glm_layer_forward(config_, params_.layers[i], rope_, tp_, batch,
                      shard().first_layer + static_cast<int64_t>(i), StepContext{}, scratch_, x,
                      &cached);
  }
  if (!shard().last_stage) return x;
  // Only the tokens whose next token is wanted go through the final LayerNorm and the head
  // (a row gather is an embedding lookup with the token indices as ids).
  const int64_t m = b.logit_tokens.numel();
  Tensor picked = Tensor::empty({m, h}, dtype(), device());
  embedding_forward(b.logit_tokens, x, 0, picked);
  Tensor y = Tensor::empty({m, h}, dtype(), device());
  layernorm_forward(picked, params_.final_layernorm_weight, params_.final_layernorm_bias,
                    static_cast<float>(config_.layernorm_epsilon), y, nullptr, nullptr);
  return head_logits(y, m);
}

Tensor GlmModel::forward_train(const Batch& host_batch, const Tensor& input,
                               const Tensor& targets, const Tensor& loss_mask,
                               const TrainOptions& opt, MicroBatchState& st) {
  st.batch = host_batch.tokens.device() == device() ? host_batch : host_batch.to(device());
  const Batch& batch = st.batch;
  const int64_t n = batch.batch * batch.seq, h = config_.hidden_size;
  st.ctx = opt.ctx;
  st.ctx.training = true;
  const DType dt = dtype();
  const Device dev = device();
  Tensor x;
  if (shard().first_stage) {
    x = embed(batch, st.ctx.hidden(-1, DropoutSite::Embedding, batch.seq, h));
  } else {
    GLMRT_CHECK(input.defined() && input.rows() == n && input.cols() == h,
                "forward_train: input ", input.defined() ? input.str() : "undefined", " for ", n,
                " tokens");
    x = input.clone();
  }
  const size_t layers = params_.layers.size();
  if (opt.recompute) {
    st.layer_inputs.assign(layers, Tensor());
    scratch_.allocate(config_, tp_.size, n, dt, dev);
  } else {
    st.layers.resize(layers);
  }
  for (size_t i = 0; i < layers; ++i) {
    if (opt.recompute) st.layer_inputs[i] = x.clone();
    else st.layers[i].allocate(config_, tp_.size, n, dt, dev);
    glm_layer_forward(config_, params_.layers[i], rope_, tp_, batch,
                      shard().first_layer + static_cast<int64_t>(i), st.ctx,
                      opt.recompute ? scratch_ : st.layers[i], x);
  }
  if (!shard().last_stage) return x;

  // ---- last stage: final LayerNorm, tied head, vocab-parallel cross-entropy in fp32
  const DType stat = dt == DType::F64 ? DType::F64 : DType::F32;
  st.final_input = x;
  st.final_out = Tensor::empty({n, h}, dt, dev);
  st.final_mean = Tensor::empty({n}, stat, dev);
  st.final_rstd = Tensor::empty({n}, stat, dev);
  layernorm_forward(x, params_.final_layernorm_weight, params_.final_layernorm_bias,
                    static_cast<float>(config_.layernorm_epsilon), st.final_out, &st.final_mean,
                    &st.final_rstd);
  st.logits = head_logits(st.final_out, n);
  GLMRT_CHECK(targets.numel() == n && loss_mask.numel() == n, "forward_train: targets ",
              targets.str(), " / loss_mask ", loss_mask.str(), " for ", n, " tokens");
  st.targets = targets.device() == dev ? targets : targets.to(dev);
  st.loss_mask = loss_mask.device().is_cpu() ? loss_mask : loss_mask.to(Device::cpu());
  st.row_max = Tensor::empty({n}, stat, dev);
  st.sum_exp = Tensor::empty({n}, stat, dev);
  cross_entropy_max(st.logits, st.row_max);
  tp_.all_reduce(st.row_max, ReduceOp::Max);
  Tensor sums = Tensor::empty({2, n}, stat, dev);  // sum_exp and target logit, one all-reduce
  Tensor sum_exp = sums.slice_rows(0, 1).view({n}), target_logit = sums.slice_rows(1, 2).view({n});
  cross_entropy_sums(st.logits, st.targets, vocab_start(), st.row_max, sum_exp, target_logit);
  tp_.all_reduce(sums);
  st.sum_exp.copy_from(sum_exp);
  const Tensor hm = st.row_max.to(Device::cpu()), hs = sums.to(Device::cpu());
  double mask_sum = 0, loss_sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double w = st.loss_mask.item(t);
    if (w == 0) continue;
    mask_sum += w;
    loss_sum += w * (std::log(hs.item(t)) + hm.item(t) - hs.item(n + t));
  }
  GLMRT_CHECK(mask_sum > 0, "forward_train: the micro-batch has no token with a loss");
  st.mask_sum = mask_sum;
  st.loss = loss_sum / mask_sum;
  return Tensor();
}

Tensor GlmModel::backward_train(MicroBatchState& st, const Tensor& dout, const TrainOptions& opt,
                                GlmParams& grads) {
  const Batch& batch = st.batch;
  const int64_t n = batch.batch * batch.seq, h = config_.hidden_size;
  const DType dt = dtype();
  const Device dev = device();
  const float egs = opt.embedding_grad_shrink;
  Tensor dx = Tensor::empty({n, h}, dt, dev);
  if (shard().last_stage) {
    const DType stat = dt == DType::F64 ? DType::F64 : DType::F32;
    Tensor dloss_host = Tensor::empty({n}, DType::F64);
    for (int64_t t = 0; t < n; ++t)
      dloss_host.data_as<double>()[t] =
          static_cast<double>(opt.grad_scale) * st.loss_mask.item(t) / st.mask_sum;
    const Tensor dloss = dloss_host.to(stat).to(dev);
    Tensor& dlogits = st.logits;  // the logits are not needed any more: reuse their memory
    cross_entropy_backward(st.logits, st.targets, vocab_start(), st.row_max, st.sum_exp, dloss,
                           dlogits);
    Tensor dy = Tensor::empty({n, h}, dt, dev);
    gemm(dlogits, false, params_.word_embeddings, false, dy, 1.0f, 0.0f);
    tp_.all_reduce(dy);  // the head is column-parallel over the vocabulary
    gemm(dlogits, true, st.final_out, false, grads.word_embeddings, egs, 1.0f);  // EGS α
    layernorm_backward(st.final_input, params_.final_layernorm_weight, st.final_mean,
                       st.final_rstd, dy, dx, &grads.final_layernorm_weight,
                       &grads.final_layernorm_bias);
    st.logits = Tensor();
  } else {
    GLMRT_CHECK(dout.defined() && dout.rows() == n && dout.cols() == h, "backward_train: dout ",
                dout.defined() ? dout.str() : "undefined");
    dx.copy_from(dout);
  }
  work_.allocate(config_, tp_.size, n, dt, dev);
  for (size_t k = params_.layers.size(); k-- > 0;) {
    const int64_t layer = shard().first_layer + static_cast<int64_t>(k);
    if (opt.recompute) {
      Tensor x = st.layer_inputs[k].clone();
      scratch_.allocate(config_, tp_.size, n, dt, dev);
      glm_layer_forward(config_, params_.layers[k], rope_, tp_, batch, layer, st.ctx, scratch_, x);
    }
    glm_layer_backward(config_, params_.layers[k], rope_, tp_, batch, layer, st.ctx,
                       opt.recompute ? scratch_ : st.layers[k], work_, dx, dx, grads.layers[k]);
  }
  st.layers.clear();
  st.layer_inputs.clear();
  if (!shard().first_stage) return dx;
  dropout_apply(dx, st.ctx.hidden(-1, DropoutSite::Embedding, batch.seq, h));
  if (egs != 1.0f) scale_inplace(dx, egs);
  embedding_backward(batch.tokens, dx, vocab_start(), grads.word_embeddings);
  return Tensor();
}

double GlmModel::forward_backward(const Batch& batch, const Tensor& targets,
                                  const Tensor& loss_mask, const TrainOptions& options,
                                  GlmParams& grads) {
  GLMRT_CHECK(shard().first_stage && shard().last_stage,
              "forward_backward needs the whole model on one stage");
  MicroBatchState state;
  forward_train(batch, Tensor(), targets, loss_mask, options, state);
  backward_train(state, Tensor(), options, grads);
  return state.loss;
}

}  // namespace glmrt
