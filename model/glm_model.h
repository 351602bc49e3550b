// The GLM model on one rank: the embedding (first pipeline stage), this stage's layers, the
// final LayerNorm and the logits through the tied word embedding (last stage), each split over
// tensor-parallel ranks (GLM130B.md §2). With one stage and no tensor parallelism it is the
// whole model.
#pragma once

#include <vector>

#include "model/batch.h"
#include "model/glm_config.h"
#include "model/glm_layer.h"
#include "model/kv_cache.h"
#include "model/parameters.h"
#include "model/rope_tables.h"

namespace glmrt {

class GlmModel {
 public:
  // Computes on the device and in the dtype of `params`, which hold params.shard()'s part.
  GlmModel(GlmConfig config, GlmParams params, TensorParallel tp = {});

  const GlmConfig& config() const { return config_; }
  GlmParams& params() { return params_; }
  const GlmParams& params() const { return params_; }
  const ModelShard& shard() const { return params_.shard(); }
  const TensorParallel& tensor_parallel() const { return tp_; }
  Device device() const { return params_.flat().device(); }
  DType dtype() const { return params_.flat().dtype(); }
  int64_t vocab_start() const { return shard().tp_rank * (config_.vocab_size / shard().tp_size); }

  // ---- Inference
  // This stage's forward: the first stage reads batch.tokens, later stages `input` [n, h].
  // Returns the activation [n, h] for the next stage, or on the last stage the logits
  // [batch, seq, vocab_size / tp] of this rank's vocabulary shard.
  Tensor forward_stage(const Batch& batch, const Tensor& input);
  // The whole model (one stage): logits [batch, seq, vocab_size / tp].
  Tensor forward(const Batch& batch) { return forward_stage(batch, Tensor()); }

  // One step of cached inference on this stage: the first stage reads batch.tokens, later
  // stages `input` [n, h]; every layer stores the step's keys and values into `cache` and
  // attends through it. Returns the activation [n, h] for the next stage, or on the last stage
  // the logits [m, vocab_size / tp] of batch.logit_tokens only (the final LayerNorm and the head
  // run on those m tokens).
  Tensor forward_cached(const CachedBatch& batch, const Tensor& input, KvCache& cache);

  // ---- Training
  struct TrainOptions {
    StepContext ctx;                     // dropout keys; ctx.training is forced on
    float embedding_grad_shrink = 1.0f;  // EGS α: gradient × α on both uses of the embedding
    float grad_scale = 1.0f;             // e.g. loss_scale / micro_batches
    bool recompute = false;              // keep only layer inputs; recompute in backward
  };
  // What one micro-batch's forward keeps for its backward on this stage.
  struct MicroBatchState {
    Batch batch;
    StepContext ctx;
    std::vector<LayerActivations> layers;  // without recompute
    std::vector<Tensor> layer_inputs;      // with recompute
    Tensor final_input, final_mean, final_rstd, final_out;     // last stage
    Tensor logits, targets, row_max, sum_exp, loss_mask;       // last stage
    double loss = 0, mask_sum = 0;                             // last stage
  };
  // Forward of one micro-batch (input as in forward_stage). On the last stage `targets` and
  // `loss_mask` give the loss Σ loss·mask / Σ mask (vocab-parallel cross-entropy in fp32), left
  // in state.loss; other stages return their output activation.
  Tensor forward_train(const Batch& batch, const Tensor& input, const Tensor& targets,
                       const Tensor& loss_mask, const TrainOptions& options,
                       MicroBatchState& state);
  // Backward of that micro-batch: `dout` is the gradient of the stage output (unused on the last
  // stage, whose gradient is grad_scale × ∇loss). Accumulates into `grads`; returns the gradient
  // of the stage input (undefined on the first stage).
  Tensor backward_train(MicroBatchState& state, const Tensor& dout, const TrainOptions& options,
                        GlmParams& grads);
  // Both, for a model that is a single stage; returns the micro-batch loss.
  double forward_backward(const Batch& batch, const Tensor& targets, const Tensor& loss_mask,
                          const TrainOptions& options, GlmParams& grads);

 private:
  Tensor embed(const Batch& batch, const DropoutSpec& dropout);
  Tensor head_logits(const Tensor& y, int64_t n);

  GlmConfig config_;
  GlmParams params_;
  TensorParallel tp_;
  RopeTables rope_;           // on the params' device
  LayerActivations scratch_;  // forward-only runs and recomputation
  LayerActivations work_;     // backward work buffers
};

}  // namespace glmrt
