// Seeded initialisation as GLM-130B trained (GLM130B.md §8): Xavier normal with the DeepNorm
// gain β = (2N)^-1/2 on both GeGLU halves, dense_4h_to_h, attention.dense and the value rows of
// QKV (gain 1 for query and key); embedding normal(0, 0.0052); biases 0; LayerNorm weights 1.
// Every element comes from Philox keyed by (seed, parameter, element of the full tensor), so
// the same seed gives the same model in every parallel layout.
#pragma once

#include <cstdint>

#include "model/glm_config.h"
#include "model/parameters.h"

namespace glmrt {

void init_glm_params(GlmParams& params, const GlmConfig& config, uint64_t seed);

}  // namespace glmrt
