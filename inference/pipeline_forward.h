// Forward-only inference over a 3D layout: rows are spread over data-parallel replicas, each row
// is a micro-batch of the forward-only pipeline schedule, and the vocabulary shards of the logits
// are gathered over the tensor-parallel group only at the end.
#pragma once

#include <functional>

#include "model/glm_model.h"
#include "parallel/process_groups.h"

namespace glmrt {

// Runs this stage's part of the forward-only pipeline schedule over `micro_batches`: receives
// micro-batch j's activation [tokens(j), hidden] from the previous stage (undefined on the first
// stage), calls forward(j, input), and sends what it returns to the next stage (on the last
// stage the result is the caller's and nothing is sent). Collective over the pipeline group.
void run_forward_only(GlmModel& model, ProcessGroups& groups, int micro_batches,
                      const std::function<int64_t(int)>& tokens,
                      const std::function<Tensor(int, const Tensor&)>& forward);

// The full-vocabulary logits F32 [rows, vocab] on the host from this rank's shard
// [rows, vocab / tp_size] (any device and dtype): all-gathered over the tensor-parallel group,
// shards side by side. Collective over `tp` when tp_size > 1.
Tensor gather_vocab_logits(const Tensor& local, Communicator& tp, int tp_size);

// Logits F32 [batch, seq, vocab_size] of every row of `batch` on world rank 0 (an undefined
// tensor elsewhere). Collective over every rank of the job; all ranks pass the same batch.
Tensor pipeline_forward(GlmModel& model, ProcessGroups& groups, const Batch& batch);

}  // namespace glmrt
