#include "parallel/group_communicator.h"

namespace glmrt {

GroupCommunicator::GroupCommunicator(std::unique_ptr<MpiCommunicator> host,
                                     std::unique_ptr<Communicator> device)
    : Communicator(host->name(), host->rank(), host->size(), std::chrono::seconds(0)),
      host_(std::move(host)), device_(std::move(device)) {}

Communicator& GroupCommunicator::pick(const Tensor& t) {
  if (t.device().is_cpu()) return *host_;
  if (!device_)
    throw CommError(name_ + " group: a device tensor (" + t.str() +
                    ") but this job has no device communicator (run with --device cuda)");
  return *device_;
}

void GroupCommunicator::wait_sends() {
  host_->wait_sends();
  if (device_) device_->wait_sends();
}

#ifndef GLMRT_WITH_CUDA
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm, const std::string& name, int,
                                                     std::chrono::seconds) {
  throw CommError(name + " group: NCCL needs a glmrt built with the CUDA backend");
}
#endif

}  // namespace glmrt
