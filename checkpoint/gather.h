// Assembling full (TP = 1) tensors from the shards spread over a job.
#pragma once

#include <vector>

#include "checkpoint/safetensors.h"
#include "model/parameters.h"
#include "parallel/process_groups.h"

namespace glmrt {

// Every parameter of the model as a full F32 host tensor, on world rank 0 (empty elsewhere).
// Collective over the world: the data-parallel rank 0 of each (tensor, pipeline) coordinate sends
// its shards; `stage_layers` is the number of layers of each pipeline stage.
NamedTensors gather_full_weights(const GlmParams& local, const GlmConfig& config,
                                 ProcessGroups& groups, const std::vector<int64_t>& stage_layers);

}  // namespace glmrt
