// Rotary-embedding cos/sin tables, F32 [max_positions, head_dim / 2] (the rotate-half pairing
// uses frequency i for dims i and i + d/2).
#pragma once

#include "kernels/tensor.h"

namespace glmrt {

struct RopeTables {
  Tensor cos, sin;
};

// fp16_faithful = GLM-130B's tables (GLM130B.md §3): inv_freq rounded to fp16, angle = fp16(t ·
// inv_freq), cos/sin computed in fp32 from the fp16 angle and rounded to fp16. Otherwise exact
// angles (double) rounded once to fp32.
RopeTables build_rope_tables(int64_t head_dim, int64_t max_positions, double base,
                             bool fp16_faithful);

}  // namespace glmrt
