// The `parallel` section: the 3D layout and how it is run.
//   parallel: {tensor: 2, pipeline: 2, data: auto, stage_layers: [], zero: false, timeout_s: 600}
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "model/yaml_fields.h"
#include "parallel/topology.h"

namespace glmrt {

struct ParallelConfig {
  int tensor = 1, pipeline = 1;
  std::optional<int> data;              // nullopt = auto: world / (tensor · pipeline)
  std::vector<int64_t> stage_layers;    // empty = even split
  bool zero = false;                    // ZeRO stage 1: shard master weights and Adam states over dp
  int64_t timeout_s = 600;              // deadline of every collective and p2p operation
  int64_t bucket_mb = 64;               // data-parallel gradient all-reduce bucket size

  // The layout for a job of `world` ranks; throws ConfigError naming what does not divide.
  Layout layout(int world) const;
};

ParallelConfig parse_parallel_section(YamlFields& f);

}  // namespace glmrt
