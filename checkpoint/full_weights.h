// Full (unsharded, TP = 1) weight files with the released GLM-130B names (GLM130B.md §7).
#pragma once

#include "checkpoint/safetensors.h"
#include "model/parameters.h"

namespace glmrt {

// Copies every parameter from `file` into `params` (converting dtype, moving to its device).
// Refuses, naming each tensor and both shapes, a missing, extra or mis-shaped tensor, and
// non-floating dtypes. `transformer.layers.*.attention.rotary_emb.inv_freq` is ignored, as in
// the released files.
void load_full_weights(const SafetensorsReader& file, GlmParams& params);

// The parameters as (released name, tensor) pairs, for write_safetensors.
NamedTensors named_tensors(const GlmParams& params);

}  // namespace glmrt
