#include "launcher/stop_signal.h"

#include <atomic>
#include <csignal>

namespace glmrt {

namespace {
std::atomic<int> g_signal{0};
extern "C" void on_stop_signal(int sig) { g_signal.store(sig); }
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

int stop_signal_received() { return g_signal.load(); }

int stop_signal_anywhere(Communicator& world) {
  Tensor t = Tensor::from_floats({static_cast<float>(g_signal.load())}, {1}, DType::F64);
  world.all_reduce(t, ReduceOp::Max);
  return static_cast<int>(t.item(0));
}

}  // namespace glmrt
