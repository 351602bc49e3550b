// One process group's communicator: host tensors travel over MPI, device tensors over the
// device communicator (NCCL) when the job computes on GPUs. Callers never choose.
#pragma once

#include <memory>

#include "parallel/mpi_communicator.h"

namespace glmrt {

class GroupCommunicator : public Communicator {
 public:
  GroupCommunicator(std::unique_ptr<MpiCommunicator> host, std::unique_ptr<Communicator> device);

  void all_reduce(Tensor& t, ReduceOp op) override { pick(t).all_reduce(t, op); }
  void all_gather(const Tensor& in, Tensor& out) override { pick(in).all_gather(in, out); }
  void reduce_scatter(const Tensor& in, Tensor& out) override { pick(in).reduce_scatter(in, out); }
  void broadcast(Tensor& t, int root) override { pick(t).broadcast(t, root); }
  void send(const Tensor& t, int peer) override { pick(t).send(t, peer); }
  void recv(Tensor& t, int peer) override { pick(t).recv(t, peer); }
  void send_recv(const Tensor& s, int send_peer, Tensor& r, int recv_peer) override {
    pick(s).send_recv(s, send_peer, r, recv_peer);
  }
  void wait_sends() override;
  void barrier() override { host_->barrier(); }

  MpiCommunicator& host() { return *host_; }

 private:
  Communicator& pick(const Tensor& t);
  std::unique_ptr<MpiCommunicator> host_;
  std::unique_ptr<Communicator> device_;  // null on CPU jobs
};

// NCCL communicator over the ranks of `comm` for GPU `device` (parallel/nccl_communicator.cpp;
// throws in builds without CUDA).
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm, const std::string& name,
                                                     int device, std::chrono::seconds timeout);

}  // namespace glmrt
