// The 3D-parallel runtime of a command: layout from the config's `parallel` section with the
// command line's overrides, process groups, and the part of the model this rank holds.
#pragma once

#include <memory>

#include "launcher/options.h"
#include "launcher/run_config.h"
#include "model/glm_layer.h"
#include "model/parameters.h"
#include "parallel/process_groups.h"

namespace glmrt {

struct ParallelRuntime {
  std::unique_ptr<ProcessGroups> groups;
  ModelShard shard;
  TensorParallel tp;
  std::vector<int64_t> stage_layers;  // layers of every pipeline stage
  bool is_world_root() const { return groups->topo.rank() == 0; }
};

// --tensor, --pipeline, --data (an integer or auto) override parallel.* for any command.
void add_parallel_options(po::options_description& desc);
// Applies the overrides to rc.parallel, validates the layout against the job and the model
// (heads, ffn size and vocabulary divisible by tensor; layers over stages) and builds the groups.
ParallelRuntime setup_parallel(RunConfig& rc, const po::variables_map& vm, Device device);

}  // namespace glmrt
