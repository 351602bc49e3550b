// SIGTERM and SIGUSR1 (Slurm's --signal before the time limit, preemption) ask a job to stop at
// the next step boundary; every rank agrees on the step through a tiny all-reduce.
#pragma once

#include "parallel/communicator.h"

namespace glmrt {

// Installs the handlers (once).
void install_stop_handlers();
// 0, or the signal received by this process.
int stop_signal_received();
// The signal received by any rank of `world` (collective), 0 when none.
int stop_signal_anywhere(Communicator& world);

}  // namespace glmrt
