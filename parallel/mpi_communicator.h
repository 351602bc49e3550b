// Communicator over MPI for host (CPU) tensors: non-blocking MPI calls completed by polling
// against a deadline, so a missing peer is reported instead of hanging.
#pragma once

#include <mpi.h>

#include <deque>

#include "parallel/communicator.h"

namespace glmrt {

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction unless it is MPI_COMM_WORLD).
  MpiCommunicator(MPI_Comm comm, std::string name, std::chrono::seconds timeout);
  ~MpiCommunicator() override;

  void all_reduce(Tensor& t, ReduceOp op) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void reduce_scatter(const Tensor& in, Tensor& out) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int peer) override;
  void recv(Tensor& t, int peer) override;
  void send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) override;
  void wait_sends() override;
  void barrier() override;

  MPI_Comm comm() const { return comm_; }

 private:
  // Polls `req` until done or the deadline passes (then throws naming `what`).
  void wait(MPI_Request& req, const std::string& what);

  struct PendingSend {
    MPI_Request request;
    Tensor tensor;  // keeps the buffer alive
    std::string what;
  };
  MPI_Comm comm_;
  std::deque<PendingSend> pending_;
};

// MPI datatype and reduction op for a tensor dtype (F16/BF16 sums are done in fp32 and rounded).
MPI_Datatype mpi_datatype(DType t);
MPI_Op mpi_op(DType t, ReduceOp op);

}  // namespace glmrt
