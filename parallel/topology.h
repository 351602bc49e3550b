// The 3D layout of a job: tensor (T) × data (D) × pipeline (P) ranks, tp fastest:
//   rank = tp + T·(dp + D·pp)
// so a tensor-parallel group stays inside an NVLink node and pipeline stages cross nodes
// (GLM-130B: T 4 × P 8 × D 24 on 96 nodes of 8 GPUs). Pure arithmetic: no MPI here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace glmrt {

struct Layout {
  int tensor = 1, pipeline = 1, data = 1;
  int world() const { return tensor * pipeline * data; }
  std::string str() const;  // "(t=2, p=2, d=2)"
};

struct Coordinates {
  int tp = 0, dp = 0, pp = 0;
};

class Topology {
 public:
  // Throws ConfigError unless world == layout.world().
  Topology(Layout layout, int world_size, int rank);

  const Layout& layout() const { return layout_; }
  int rank() const { return rank_; }
  const Coordinates& coords() const { return coords_; }
  int tp_rank() const { return coords_.tp; }
  int dp_rank() const { return coords_.dp; }
  int pp_rank() const { return coords_.pp; }
  bool is_first_stage() const { return coords_.pp == 0; }
  bool is_last_stage() const { return coords_.pp == layout_.pipeline - 1; }

  int rank_of(const Coordinates& c) const;
  Coordinates coords_of(int rank) const;

  // The world ranks of this rank's groups, in group-rank order.
  std::vector<int> tp_group() const;   // same dp, pp
  std::vector<int> dp_group() const;   // same tp, pp
  std::vector<int> pp_group() const;   // same tp, dp: stage 0 .. P-1
  // First and last stage of this rank's pipeline (one rank when P = 1): the tied word embedding's
  // gradient is summed over it. Empty for ranks on middle stages.
  std::vector<int> embedding_group() const;

 private:
  Layout layout_;
  int rank_;
  Coordinates coords_;
};

// Layers per pipeline stage: an explicit list (must sum to num_layers) or an even split.
std::vector<int64_t> stage_layer_counts(int64_t num_layers, int pipeline,
                                        const std::vector<int64_t>& explicit_counts);

}  // namespace glmrt
