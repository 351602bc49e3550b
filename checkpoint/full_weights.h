// Full (unsharded, TP = 1) weight files with the released GLM-130B names (GLM130B.md §7).
#pragma once

#include "checkpoint/safetensors.h"
#include "model/parameters.h"

namespace glmrt {

// Copies this rank's shard of every parameter from the full weight `file` into `params`
// (slicing by shard rule, converting dtype, moving to its device). The file must hold exactly
// the parameters of `config`: a missing, extra or mis-shaped tensor, or a non-floating dtype, is
// refused with each tensor and both shapes named. `…attention.rotary_emb.inv_freq` is ignored,
// as in the released files.
void load_full_weights(const SafetensorsReader& file, const GlmConfig& config, GlmParams& params);
// The checks load_full_weights makes before it copies anything (CheckpointError naming each
// problem).
void check_full_weights(const SafetensorsReader& file, const GlmConfig& config);

// The parameters as (released name, tensor) pairs, for write_safetensors.
NamedTensors named_tensors(const GlmParams& params);

}  // namespace glmrt
