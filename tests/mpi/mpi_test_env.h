#pragma once

#include <cstdint>

#include "model/glm_model.h"
#include "model/init.h"
#include "parallel/process_groups.h"
#include "parallel/topology.h"

namespace glmrt::testing {
// The layout under test (--layout=t,p,d on the command line).
extern Layout g_layout;

// This rank's part of an F32 CPU model of config c under g_layout, initialised from `seed`
// (init_glm_params: every layout holds the same values); `pad` as GlmParams::allocate's.
inline GlmModel layout_model(const GlmConfig& c, const ProcessGroups& groups, uint32_t seed,
                             int64_t pad = 1) {
  const auto counts = stage_layer_counts(c.num_layers, g_layout.pipeline, {});
  const ModelShard shard = ModelShard::of_rank(groups.topo, counts);
  GlmParams params = GlmParams::allocate(c, DType::F32, Device::cpu(), shard, pad);
  init_glm_params(params, c, seed);
  return GlmModel(c, std::move(params), {groups.tp.get(), shard.tp_rank, shard.tp_size});
}
}  // namespace glmrt::testing
