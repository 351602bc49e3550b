// The communicators of one rank, built once from the layout: world, tensor-, data- and
// pipeline-parallel groups, and the embedding group (first and last stage of each pipeline,
// per tensor-parallel rank) that sums the tied word embedding's gradient.
#pragma once

#include <chrono>
#include <memory>

#include "kernels/dtype.h"
#include "parallel/group_communicator.h"
#include "parallel/topology.h"

namespace glmrt {

struct ProcessGroups {
  Topology topo;
  std::unique_ptr<MpiCommunicator> world;  // host scalars: losses, norms, weight gathering
  std::unique_ptr<GroupCommunicator> tp, dp, pp;
  std::unique_ptr<GroupCommunicator> embedding;  // null on middle stages
  // Host messages within one model replica (every tensor and pipeline rank of this data-parallel
  // index; replica rank = tp + tensor · pp): the generation engine's control and decisions, so
  // that data-parallel replicas generate independently.
  std::unique_ptr<MpiCommunicator> replica;
  // How long a rank waits on a peer before failing by name (parallel.timeout_s).
  std::chrono::seconds timeout{0};

  // Splits MPI_COMM_WORLD (collective over every rank); on a CUDA `device` every group also gets
  // an NCCL communicator for device tensors. Throws ConfigError when the layout does not match
  // the job's size.
  static std::unique_ptr<ProcessGroups> create(const Layout& layout, std::chrono::seconds timeout,
                                               Device device = Device::cpu());
};

}  // namespace glmrt
