#include "parallel/topology.h"

#include <numeric>

#include "kernels/error.h"

namespace glmrt {

std::string Layout::str() const {
  return "(t=" + std::to_string(tensor) + ", p=" + std::to_string(pipeline) +
         ", d=" + std::to_string(data) + ")";
}

Topology::Topology(Layout layout, int world_size, int rank) : layout_(layout), rank_(rank) {
  if (layout.tensor < 1 || layout.pipeline < 1 || layout.data < 1)
    throw ConfigError("parallel layout " + layout.str() + ": every degree must be at least 1");
  if (layout.world() != world_size)
    throw ConfigError("parallel layout " + layout.str() + " needs " +
                      std::to_string(layout.world()) + " ranks, the job has " +
                      std::to_string(world_size));
  GLMRT_CHECK(rank >= 0 && rank < world_size, "rank ", rank, " of ", world_size);
  coords_ = coords_of(rank);
}

int Topology::rank_of(const Coordinates& c) const {
  return c.tp + layout_.tensor * (c.dp + layout_.data * c.pp);
}

Coordinates Topology::coords_of(int rank) const {
  Coordinates c;
  c.tp = rank % layout_.tensor;
  c.dp = (rank / layout_.tensor) % layout_.data;
  c.pp = rank / (layout_.tensor * layout_.data);
  return c;
}

std::vector<int> Topology::tp_group() const {
  std::vector<int> g;
  for (int t = 0; t < layout_.tensor; ++t) g.push_back(rank_of({t, coords_.dp, coords_.pp}));
  return g;
}

std::vector<int> Topology::dp_group() const {
  std::vector<int> g;
  for (int d = 0; d < layout_.data; ++d) g.push_back(rank_of({coords_.tp, d, coords_.pp}));
  return g;
}

std::vector<int> Topology::pp_group() const {
  std::vector<int> g;
  for (int p = 0; p < layout_.pipeline; ++p) g.push_back(rank_of({coords_.tp, coords_.dp, p}));
  return g;
}

std::vector<int> Topology::embedding_group() const {
  if (!is_first_stage() && !is_last_stage()) return {};
  std::vector<int> g{rank_of({coords_.tp, coords_.dp, 0})};
  if (layout_.pipeline > 1) g.push_back(rank_of({coords_.tp, coords_.dp, layout_.pipeline - 1}));
  return g;
}

std::vector<int64_t> stage_layer_counts(int64_t num_layers, int pipeline,
                                        const std::vector<int64_t>& explicit_counts) {
  if (!explicit_counts.empty()) {
    if (static_cast<int>(explicit_counts.size()) != pipeline)
      throw ConfigError("parallel.stage_layers has " + std::to_string(explicit_counts.size()) +
                        " entries for " + std::to_string(pipeline) + " pipeline stages");
    for (int64_t c : explicit_counts)
      if (c < 1) throw ConfigError("parallel.stage_layers: every stage needs at least one layer");
    const int64_t sum = std::accumulate(explicit_counts.begin(), explicit_counts.end(), int64_t{0});
    if (sum != num_layers)
      throw ConfigError("parallel.stage_layers sums to " + std::to_string(sum) + ", model has " +
                        std::to_string(num_layers) + " layers");
    return explicit_counts;
  }
  if (num_layers % pipeline != 0)
    throw ConfigError(std::to_string(num_layers) + " layers do not split evenly over " +
                      std::to_string(pipeline) +
                      " pipeline stages; set parallel.stage_layers (e.g. fewer on the embedding stages)");
  return std::vector<int64_t>(static_cast<size_t>(pipeline), num_layers / pipeline);
}

}  // namespace glmrt
