#include "parallel/mpi_communicator.h"

#include <thread>

#include "kernels/half.h"

namespace glmrt {

std::string Communicator::describe(const std::string& op, const Tensor* t) const {
  return "rank " + std::to_string(world_rank_) + " (" + name_ + " group rank " +
         std::to_string(rank_) + " of " + std::to_string(size_) + "): " + op +
         (t ? " of " + t->str() : std::string());
}

namespace {
template <class H, float (*ToF)(H), H (*FromF)(float)>
void sum_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  H* a = static_cast<H*>(in);
  H* b = static_cast<H*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = FromF(ToF(a[i]) + ToF(b[i]));
}
template <class H, float (*ToF)(H), H (*FromF)(float)>
void max_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  H* a = static_cast<H*>(in);
  H* b = static_cast<H*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = FromF(std::max(ToF(a[i]), ToF(b[i])));
}

struct HalfTypes {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op f16_sum, f16_max, bf16_sum, bf16_max;
  HalfTypes() {
    MPI_Type_contiguous(2, MPI_BYTE, &type);
    MPI_Type_commit(&type);
    MPI_Op_create(&sum_16bit<f16, f16_to_float, float_to_f16>, 1, &f16_sum);
    MPI_Op_create(&max_16bit<f16, f16_to_float, float_to_f16>, 1, &f16_max);
    MPI_Op_create(&sum_16bit<bf16, bf16_to_float, float_to_bf16>, 1, &bf16_sum);
    MPI_Op_create(&max_16bit<bf16, bf16_to_float, float_to_bf16>, 1, &bf16_max);
  }
};
HalfTypes& half_types() {
  static HalfTypes h;  // created after MPI_Init, on first use; freed by MPI_Finalize
  return h;
}

void check(int rc, const std::string& what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw CommError(what + ": " + std::string(msg, static_cast<size_t>(len)));
  }
}

void require_host(const Tensor& t, const std::string& what) {
  if (!t.device().is_cpu())
    throw CommError(what + ": the MPI communicator takes host tensors; device tensors go over NCCL");
}
}  // namespace

MPI_Datatype mpi_datatype(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I8: return MPI_INT8_T;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::F16:
    case DType::BF16: return half_types().type;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(DType t, ReduceOp op) {
  if (t == DType::F16) return op == ReduceOp::Sum ? half_types().f16_sum : half_types().f16_max;
  if (t == DType::BF16) return op == ReduceOp::Sum ? half_types().bf16_sum : half_types().bf16_max;
  return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX;
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, std::chrono::seconds timeout)
    : Communicator(std::move(name), 0, 1, timeout), comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (PendingSend& p : pending_) MPI_Request_free(&p.request);
  if (comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::wait(MPI_Request& req, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  int done = 0;
  auto pause = std::chrono::microseconds(1);
  for (;;) {
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    if (std::chrono::steady_clock::now() > deadline)
      throw CommError(what + ": no answer from the group within " +
                      std::to_string(timeout_.count()) + " s (a peer has failed or hangs)");
    std::this_thread::sleep_for(pause);  // back off: ranks may share cores
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

void MpiCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  const std::string what = describe("all_reduce", &t);
  require_host(t, what);
  if (size_ == 1 || t.numel() == 0) return;
  MPI_Request req;
  check(MPI_Iallreduce(MPI_IN_PLACE, t.data(), static_cast<int>(t.numel()), mpi_datatype(t.dtype()),
                       mpi_op(t.dtype(), op), comm_, &req),
        what);
  wait(req, what);
}

void MpiCommunicator::all_gather(const Tensor& in, Tensor& out) {
  const std::string what = describe("all_gather", &in);
  require_host(in, what);
  GLMRT_CHECK(out.numel() == in.numel() * size_ && out.dtype() == in.dtype(), what, " into ",
              out.str());
  MPI_Request req;
  check(MPI_Iallgather(in.data(), static_cast<int>(in.numel()), mpi_datatype(in.dtype()),
                       out.data(), static_cast<int>(in.numel()), mpi_datatype(in.dtype()), comm_,
                       &req),
        what);
  wait(req, what);
}

void MpiCommunicator::reduce_scatter(const Tensor& in, Tensor& out) {
  const std::string what = describe("reduce_scatter", &in);
  require_host(in, what);
  GLMRT_CHECK(in.numel() == out.numel() * size_ && out.dtype() == in.dtype(), what, " into ",
              out.str());
  MPI_Request req;
  check(MPI_Ireduce_scatter_block(in.data(), out.data(), static_cast<int>(out.numel()),
                                  mpi_datatype(in.dtype()), mpi_op(in.dtype(), ReduceOp::Sum),
                                  comm_, &req),
        what);
  wait(req, what);
}

void MpiCommunicator::broadcast(Tensor& t, int root) {
  const std::string what = describe("broadcast from " + std::to_string(root), &t);
  require_host(t, what);
  if (size_ == 1) return;
  MPI_Request req;
  check(MPI_Ibcast(t.data(), static_cast<int>(t.numel()), mpi_datatype(t.dtype()), root, comm_, &req),
        what);
  wait(req, what);
}

void MpiCommunicator::send(const Tensor& t, int peer) {
  const std::string what = describe("send to " + std::to_string(peer), &t);
  require_host(t, what);
  PendingSend p{MPI_REQUEST_NULL, t, what};
  check(MPI_Isend(t.data(), static_cast<int>(t.numel()), mpi_datatype(t.dtype()), peer, 0, comm_,
                  &p.request),
        what);
  pending_.push_back(std::move(p));
}

void MpiCommunicator::recv(Tensor& t, int peer) {
  const std::string what = describe("recv from " + std::to_string(peer), &t);
  require_host(t, what);
  MPI_Request req;
  check(MPI_Irecv(t.data(), static_cast<int>(t.numel()), mpi_datatype(t.dtype()), peer, 0, comm_,
                  &req),
        what);
  wait(req, what);
  // Opportunistically retire completed sends.
  while (!pending_.empty()) {
    int done = 0;
    MPI_Test(&pending_.front().request, &done, MPI_STATUS_IGNORE);
    if (!done) break;
    pending_.pop_front();
  }
}

void MpiCommunicator::send_recv(const Tensor& out, int send_peer, Tensor& in, int recv_peer) {
  send(out, send_peer);  // non-blocking: the pair cannot deadlock
  recv(in, recv_peer);
}

void MpiCommunicator::wait_sends() {
  while (!pending_.empty()) {
    wait(pending_.front().request, pending_.front().what);
    pending_.pop_front();
  }
}

void MpiCommunicator::barrier() {
  const std::string what = describe("barrier", nullptr);
  MPI_Request req;
  check(MPI_Ibarrier(comm_, &req), what);
  wait(req, what);
}

}  // namespace glmrt
