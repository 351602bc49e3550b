#include "parallel/process_groups.h"

namespace glmrt {

namespace {
std::unique_ptr<GroupCommunicator> split(int color, int key, const char* name,
                                         std::chrono::seconds timeout, Device device) {
  MPI_Comm comm;
  MPI_Comm_split(MPI_COMM_WORLD, color, key, &comm);
  if (comm == MPI_COMM_NULL) return nullptr;
  std::unique_ptr<Communicator> nccl;
  if (device.is_cuda()) nccl = make_nccl_communicator(comm, name, device.index, timeout);
  return std::make_unique<GroupCommunicator>(std::make_unique<MpiCommunicator>(comm, name, timeout),
                                             std::move(nccl));
}
}  // namespace

std::unique_ptr<ProcessGroups> ProcessGroups::create(const Layout& layout,
                                                     std::chrono::seconds timeout, Device device) {
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  auto g = std::unique_ptr<ProcessGroups>(new ProcessGroups{Topology(layout, world, rank), {}, {}, {}, {}, {}, {}, timeout});
  const Coordinates c = g->topo.coords();
  const int T = layout.tensor, D = layout.data;
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  g->world = std::make_unique<MpiCommunicator>(dup, "world", timeout);
  g->tp = split(c.dp + D * c.pp, c.tp, "tp", timeout, device);
  g->dp = split(c.tp + T * c.pp, c.dp, "dp", timeout, device);
  g->pp = split(c.tp + T * c.dp, c.pp, "pp", timeout, device);
  const bool on_embedding_stage = g->topo.is_first_stage() || g->topo.is_last_stage();
  g->embedding = split(on_embedding_stage ? c.tp + T * c.dp : MPI_UNDEFINED, c.pp, "embedding",
                       timeout, on_embedding_stage ? device : Device::cpu());
  MPI_Comm replica;
  MPI_Comm_split(MPI_COMM_WORLD, c.dp, c.tp + T * c.pp, &replica);
  g->replica = std::make_unique<MpiCommunicator>(replica, "replica", timeout);
  return g;
}

}  // namespace glmrt
