// Communicator over NCCL for device (GPU) tensors, one per process group (make_nccl_communicator,
// declared in parallel/group_communicator.h). As in FasterTransformer: the group's MPI
// communicator carries NCCL's unique id from group rank 0, then every rank joins with
// ncclCommInitRankConfig.
//
// Hangs are errors (parallel/communicator.h): the NCCL communicator is non-blocking
// (config.blocking = 0), so no NCCL call waits on a peer; every operation is enqueued, then
// completed by polling an event and ncclCommGetAsyncError against the deadline. When the deadline
// passes or NCCL reports an error, the communicator is aborted (ncclCommAbort: kernels waiting on
// a dead peer quit) and a CommError names the rank, the group and the operation.
//
// Streams: everything runs on the legacy default stream, like the CUDA kernels
// (kernels/cuda/*.cu launch on stream 0), so NCCL operations are ordered with the kernels that
// produce and consume their tensors without extra events. A consequence: operations complete in
// issue order, so once any operation has completed, so have all sends issued before it.
// Neighbours that send to each other at once must use send_recv (one NCCL group).
#ifdef GLMRT_WITH_CUDA

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "parallel/group_communicator.h"

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "glmrt needs NCCL 2.14 or later (non-blocking communicators, ncclCommInitRankConfig)"
#endif

namespace glmrt {
namespace {

using Clock = std::chrono::steady_clock;

// The legacy default stream (the kernels' stream; this file is not built with per-thread
// default streams, and neither are the kernels nor NCCL).
const cudaStream_t kStream = nullptr;

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    case DType::I8: return ncclInt8;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclMax; }

std::string nccl_message(ncclResult_t rc) {
  return "NCCL error " + std::to_string(static_cast<int>(rc)) + ": " + ncclGetErrorString(rc);
}

std::string cuda_message(cudaError_t e) {
  return std::string("CUDA error ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
}

// Makes `device` current for a scope (the process normally stays on one device; this only
// guards against a caller that switched).
class CurrentDevice {
 public:
  explicit CurrentDevice(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = device;
    if (previous_ != device) cudaSetDevice(device);
    device_ = device;
  }
  ~CurrentDevice() {
    if (previous_ != device_) cudaSetDevice(previous_);
  }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

 private:
  int previous_ = 0, device_ = 0;
};

// Polling pace: yields for the first ~thousand polls (a GPU collective usually completes in
// microseconds to a few milliseconds, and the host has nothing else to do), then sleeps with
// doubling pauses up to 200 µs (ranks may share cores; a wait of seconds costs little CPU).
class Backoff {
 public:
  void pause() {
    if (spins_ < 1000) {
      ++spins_;
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, std::chrono::microseconds(200));
  }

 private:
  int spins_ = 0;
  std::chrono::microseconds sleep_{1};
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const std::string& name, int rank, int size, int world_rank, int device,
                   std::chrono::seconds timeout)
      : Communicator(name, rank, size, timeout), device_(device) {
    world_rank_ = world_rank;
  }
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // Joins the NCCL communicator over the ranks of `comm` (used only here; not kept).
  void init(MPI_Comm comm);

  void all_reduce(Tensor& t, ReduceOp op) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void reduce_scatter(const Tensor& in, Tensor& out) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int peer) override;
  void recv(Tensor& t, int peer) override;
  void send_recv(const Tensor& send, int send_peer, Tensor& recv, int recv_peer) override;
  void wait_sends() override;
  void barrier() override;

 private:
  // The communicator, or a CommError when an earlier failure aborted it.
  ncclComm_t live(const std::string& what) const;
  void require_device(const Tensor& t, const std::string& what) const;
  void check_peer(int peer, const std::string& what) const;
  // Settles the result of an NCCL call: ncclInProgress (the non-blocking communicator is still
  // enqueuing, e.g. connecting to peers on first use) is polled until the operation is enqueued;
  // an error or the deadline aborts the communicator and throws.
  void settle(ncclResult_t rc, const std::string& what, Clock::time_point deadline);
  // Waits until everything enqueued so far on the stream (this operation and every earlier send)
  // has completed, watching NCCL's asynchronous error state and the deadline.
  void finish(const std::string& what, Clock::time_point deadline);
  // Aborts the communicator and throws CommError("`what`: `why` ...").
  [[noreturn]] void fail(const std::string& what, const std::string& why);
  std::string timeout_message() const {
    return "no answer from the group within " + std::to_string(timeout_.count()) +
           " s (a peer has failed, hangs, or did not issue the same operation)";
  }

  struct PendingSend {
    Tensor tensor;  // keeps the buffer alive until the send has completed
    std::string what;
  };
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaEvent_t done_ = nullptr;
  std::string aborted_;  // why the communicator was aborted (empty while healthy)
  std::vector<PendingSend> pending_;
  Tensor barrier_buffer_;
};

NcclCommunicator::~NcclCommunicator() {
  try {
    if (comm_) {
      CurrentDevice on(device_);
      // Normal end: ncclCommFinalize flushes outstanding operations and syncs with the peers;
      // waited for up to the timeout, then ncclCommDestroy frees locally. While an exception
      // unwinds (a failing job: peers may be gone or stuck elsewhere), or when finalizing fails or
      // hangs, ncclCommAbort frees at once without waiting on anyone. (Both destroy and abort
      // return only when done, also on a non-blocking communicator: comm_ is not used after.)
      bool clean = std::uncaught_exceptions() == 0;
      if (clean) {
        ncclResult_t state = ncclCommFinalize(comm_);
        const auto deadline = Clock::now() + timeout_;
        Backoff backoff;
        while (state == ncclInProgress && Clock::now() < deadline) {
          backoff.pause();
          if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
        }
        clean = state == ncclSuccess;
      }
      if (clean) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    if (done_) cudaEventDestroy(done_);
  } catch (...) {
    // Never throw from a destructor (only string allocation could).
  }
}

void NcclCommunicator::init(MPI_Comm comm) {
  const std::string what = describe("NCCL communicator setup on cuda:" + std::to_string(device_),
                                    nullptr);
  const auto deadline = Clock::now() + timeout_;
  if (const cudaError_t e = cudaSetDevice(device_); e != cudaSuccess)
    throw CommError(what + ": cudaSetDevice(" + std::to_string(device_) + "): " + cuda_message(e));

  // Group rank 0 draws the unique id and broadcasts it (or its failure, so that no rank waits
  // for an id that never comes).
  struct IdMessage {
    int ok = 0;
    char error[244] = {};
    ncclUniqueId id;
  } msg;
  std::memset(&msg.id, 0, sizeof msg.id);
  if (rank_ == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&msg.id);
    msg.ok = rc == ncclSuccess;
    if (!msg.ok) std::snprintf(msg.error, sizeof msg.error, "%s", nccl_message(rc).c_str());
  }
  MPI_Request req;
  if (MPI_Ibcast(&msg, sizeof msg, MPI_BYTE, 0, comm, &req) != MPI_SUCCESS)
    throw CommError(what + ": MPI_Ibcast of the NCCL unique id failed");
  Backoff backoff;
  for (int done = 0;;) {
    if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
      throw CommError(what + ": MPI_Ibcast of the NCCL unique id failed");
    if (done) break;
    if (Clock::now() > deadline) throw CommError(what + ": " + timeout_message());
    backoff.pause();
  }
  if (!msg.ok) throw CommError(what + ": ncclGetUniqueId failed on group rank 0: " + msg.error);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t rc = ncclCommInitRankConfig(&comm_, size_, msg.id, rank_, &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    throw CommError(what + ": ncclCommInitRankConfig: " + nccl_message(rc));
  }
  settle(rc, what, deadline);
  if (const cudaError_t e = cudaEventCreateWithFlags(&done_, cudaEventDisableTiming);
      e != cudaSuccess)
    fail(what, "cudaEventCreateWithFlags: " + cuda_message(e));
}

ncclComm_t NcclCommunicator::live(const std::string& what) const {
  if (!comm_)
    throw CommError(what + ": the NCCL communicator was aborted after an earlier error (" +
                    aborted_ + ")");
  return comm_;
}

void NcclCommunicator::require_device(const Tensor& t, const std::string& what) const {
  if (!t.defined() || !t.device().is_cuda())
    throw CommError(what +
                    ": the NCCL communicator takes device tensors; host tensors go over MPI");
  if (t.device().index != device_)
    throw CommError(what + ": the tensor is on " + t.device().str() +
                    " but this rank's NCCL communicator is on cuda:" + std::to_string(device_));
}

void NcclCommunicator::check_peer(int peer, const std::string& what) const {
  if (peer < 0 || peer >= size_)
    throw CommError(what + ": no rank " + std::to_string(peer) + " in a group of " +
                    std::to_string(size_));
}

void NcclCommunicator::fail(const std::string& what, const std::string& why) {
  std::string message = what + ": " + why;
  if (comm_) {
    const char* last = ncclGetLastError(comm_);
    if (last && *last) message += " (NCCL's last error: " + std::string(last) + ")";
    ncclCommAbort(comm_);
    comm_ = nullptr;
    message += "; the NCCL communicator was aborted";
  }
  aborted_ = why;
  throw CommError(message);
}

void NcclCommunicator::settle(ncclResult_t rc, const std::string& what,
                              Clock::time_point deadline) {
  if (rc == ncclSuccess) return;
  if (rc != ncclInProgress) fail(what, nccl_message(rc));
  Backoff backoff;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    if (const ncclResult_t q = ncclCommGetAsyncError(comm_, &state); q != ncclSuccess)
      fail(what, "ncclCommGetAsyncError: " + nccl_message(q));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) fail(what, nccl_message(state));
    if (Clock::now() > deadline) fail(what, timeout_message());
    backoff.pause();
  }
}

void NcclCommunicator::finish(const std::string& what, Clock::time_point deadline) {
  if (const cudaError_t e = cudaEventRecord(done_, kStream); e != cudaSuccess)
    fail(what, "cudaEventRecord: " + cuda_message(e));
  Backoff backoff;
  for (;;) {
    const cudaError_t e = cudaEventQuery(done_);
    if (e != cudaSuccess && e != cudaErrorNotReady) fail(what, cuda_message(e));
    ncclResult_t state = ncclSuccess;
    if (const ncclResult_t q = ncclCommGetAsyncError(comm_, &state); q != ncclSuccess)
      fail(what, "ncclCommGetAsyncError: " + nccl_message(q));
    if (state != ncclSuccess && state != ncclInProgress) fail(what, nccl_message(state));
    if (e == cudaSuccess) break;
    if (Clock::now() > deadline) fail(what, timeout_message());
    backoff.pause();
  }
  pending_.clear();  // stream order: every send enqueued before the event has completed
}

void NcclCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  const std::string what = describe("all_reduce", &t);
  require_device(t, what);
  ncclComm_t comm = live(what);
  if (t.numel() == 0) return;
  CurrentDevice on(device_);
  const auto deadline = Clock::now() + timeout_;
  settle(ncclAllReduce(t.data(), t.data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()),
                       nccl_op(op), comm, kStream),
         what, deadline);
  finish(what, deadline);
}

void NcclCommunicator::all_gather(const Tensor& in, Tensor& out) {
  const std::string what = describe("all_gather", &in);
  require_device(in, what);
  require_device(out, what);
  GLMRT_CHECK(out.numel() == in.numel() * size_ && out.dtype() == in.dtype(), what, " into ",
              out.str());
  ncclComm_t comm = live(what);
  if (in.numel() == 0) return;
  CurrentDevice on(device_);
  const auto deadline = Clock::now() + timeout_;
  settle(ncclAllGather(in.data(), out.data(), static_cast<size_t>(in.numel()),
                       nccl_type(in.dtype()), comm, kStream),
         what, deadline);
  finish(what, deadline);
}

void NcclCommunicator::reduce_scatter(const Tensor& in, Tensor& out) {
  const std::string what = describe("reduce_scatter", &in);
  require_device(in, what);
  require_device(out, what);
  GLMRT_CHECK(in.numel() == out.numel() * size_ && out.dtype() == in.dtype(), what, " into ",
              out.str());
  ncclComm_t comm = live(what);
  if (out.numel() == 0) return;
  CurrentDevice on(device_);
  const auto deadline = Clock::now() + timeout_;
  settle(ncclReduceScatter(in.data(), out.data(), static_cast<size_t>(out.numel()),
                           nccl_type(in.dtype()), ncclSum, comm, kStream),
         what, deadline);
  finish(what, deadline);
}

void NcclCommunicator::broadcast(Tensor& t, int root) {
  const std::string what = describe("broadcast from " + std::to_string(root), &t);
  require_device(t, what);
  check_peer(root, what);
  ncclComm_t comm = live(what);
  if (t.numel() == 0) return;
  CurrentDevice on(device_);
  const auto deadline = Clock::now() + timeout_;
  settle(ncclBroadcast(t.data(), t.data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()),
                       root, comm, kStream),
         what, deadline);
  finish(what, deadline);
}

void NcclCommunicator::send(const Tensor& t, int peer) {
  const std::string what = describe("send to " + std::to_string(peer), &t);
  require_device(t, what);
  check_peer(peer, what);
  ncclComm_t comm = live(what);
  if (t.numel() == 0) return;
  CurrentDevice on(device_);
  // Waits only while NCCL enqueues (the first send to a peer connects to it).
  settle(ncclSend(t.data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), peer, comm,
                  kStream),
         what, Clock::now() + timeout_);
  pending_.push_back({t, what});
}

void NcclCommunicator::recv(Tensor& t, int peer) {
  const std::string what = describe("recv from " + std::to_string(peer), &t);
  require_device(t, what);
  check_peer(peer, what);
  ncclComm_t comm = live(what);
  if (t.numel() == 0) return;
  CurrentDevice on(device_);
  const auto deadline = Clock::now() + timeout_;
  settle(ncclRecv(t.data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), peer, comm,
                  kStream),
         what, deadline);
  finish(what, deadline);
}

void NcclCommunicator::send_recv(const Tensor& out, int send_peer, Tensor& in, int recv_peer) {
  const std::string what = describe("send_recv (send " + out.str() + " to " +
                                        std::to_string(send_peer) + ", receive from " +
                                        std::to_string(recv_peer) + ")",
                                    &in);
  require_device(out, what);
  require_device(in, what);
  check_peer(send_peer, what);
  check_peer(recv_peer, what);
  ncclComm_t comm = live(what);
  if (out.numel() == 0 && in.numel() == 0) return;
  CurrentDevice on(device_);
  const auto deadline = Clock::now() + timeout_;
  // One NCCL group: both sides progress together, so neighbours exchanging at once cannot
  // deadlock. ncclGroupEnd is called whatever the calls inside returned (it cleans up).
  if (const ncclResult_t rc = ncclGroupStart(); rc != ncclSuccess)
    fail(what, "ncclGroupStart: " + nccl_message(rc));
  ncclResult_t sent = ncclSuccess, received = ncclSuccess;
  if (out.numel() > 0)
    sent = ncclSend(out.data(), static_cast<size_t>(out.numel()), nccl_type(out.dtype()),
                    send_peer, comm, kStream);
  if (in.numel() > 0)
    received = ncclRecv(in.data(), static_cast<size_t>(in.numel()), nccl_type(in.dtype()),
                        recv_peer, comm, kStream);
  const ncclResult_t ended = ncclGroupEnd();
  if (sent != ncclSuccess && sent != ncclInProgress) fail(what, "ncclSend: " + nccl_message(sent));
  if (received != ncclSuccess && received != ncclInProgress)
    fail(what, "ncclRecv: " + nccl_message(received));
  settle(ended, what, deadline);
  finish(what, deadline);
}

void NcclCommunicator::wait_sends() {
  if (pending_.empty()) return;
  std::string what = pending_.front().what;
  if (pending_.size() > 1)
    what += " (and " + std::to_string(pending_.size() - 1) + " later sends)";
  live(what);
  CurrentDevice on(device_);
  finish(what, Clock::now() + timeout_);
}

void NcclCommunicator::barrier() {
  const std::string what = describe("barrier", nullptr);
  ncclComm_t comm = live(what);
  CurrentDevice on(device_);
  if (!barrier_buffer_.defined())
    barrier_buffer_ = Tensor::zeros({1}, DType::F32, Device::cuda(device_));
  const auto deadline = Clock::now() + timeout_;
  settle(ncclAllReduce(barrier_buffer_.data(), barrier_buffer_.data(), 1, ncclFloat32, ncclSum,
                       comm, kStream),
         what, deadline);
  finish(what, deadline);
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm, const std::string& name,
                                                     int device, std::chrono::seconds timeout) {
  int rank = 0, size = 1, world_rank = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  auto nccl = std::make_unique<NcclCommunicator>(name, rank, size, world_rank, device, timeout);
  nccl->init(comm);  // on failure the destructor aborts whatever was created
  return nccl;
}

}  // namespace glmrt

#endif  // GLMRT_WITH_CUDA
