// Collective and point-to-point communication within one process group. Implemented over MPI
// for host tensors (parallel/mpi_communicator.h) and over NCCL for device tensors
// (parallel/nccl_communicator.h). Model code only ever sees this interface.
//
// Hangs are errors: every operation has a deadline; when it passes, the operation throws a
// CommError naming the rank, the group and the operation, and the launcher aborts the job.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/tensor.h"

namespace glmrt {

class CommError : public Error {
 public:
  using Error::Error;
};

enum class ReduceOp { Sum, Max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }  // "tp", "dp", "pp", "embedding", "world"

  // In place over all ranks of the group.
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  // out [size · rows(in), ...] = concatenation of every rank's `in` along dim 0.
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  // `in` holds size equal chunks along dim 0; rank r receives the sum of every rank's chunk r.
  virtual void reduce_scatter(const Tensor& in, Tensor& out) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  // Point to point, peers as group ranks. send() returns at once (the tensor's storage is kept
  // until the message is delivered); recv() waits; wait_sends() completes every pending send.
  virtual void send(const Tensor& t, int peer) = 0;
  virtual void recv(Tensor& t, int peer) = 0;
  // A send and a receive issued together (NCCL group semantics): neighbours that send to each
  // other at the same time cannot deadlock (Megatron's send_forward_recv_backward). Returns when
  // the receive is complete.
  virtual void send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) = 0;
  virtual void wait_sends() = 0;
  virtual void barrier() = 0;

 protected:
  Communicator(std::string name, int rank, int size, std::chrono::seconds timeout)
      : name_(std::move(name)), rank_(rank), size_(size), timeout_(timeout) {}
  // "rank 3 (tp group rank 1 of 2): all_reduce of F32[64, 32]"
  std::string describe(const std::string& op, const Tensor* t) const;

  std::string name_;
  int rank_, size_;
  std::chrono::seconds timeout_;
  int world_rank_ = 0;
};

}  // namespace glmrt
