// Pipeline schedules as data (DeepSpeed's idea): a pure function of (stages, stage,
// micro-batches) returns the instruction list one stage executes. An executor runs it; tests
// simulate every stage at once on one thread.
#pragma once

#include <string>
#include <vector>

namespace glmrt {

enum class PipeOp {
  RecvActivation,  // from the previous stage
  Forward,
  SendActivation,  // to the next stage
  RecvGrad,        // from the next stage
  Backward,
  SendGrad,        // to the previous stage
  ReduceGrads,     // data-parallel and embedding-group gradient reduction
  OptimizerStep,
};
const char* pipe_op_name(PipeOp op);

struct PipeInstruction {
  PipeOp op;
  int micro_batch = -1;  // -1 for ReduceGrads / OptimizerStep
  bool operator==(const PipeInstruction&) const = default;
};

// 1F1B (PipeDream-Flush): min(P - stage - 1, M) warm-up forwards, then one forward and one
// backward in turn, then the remaining backwards; gradient reduction and the step at the end.
// Stage `stage` keeps at most min(P - stage, M) micro-batches' activations in flight.
std::vector<PipeInstruction> one_f_one_b_schedule(int stages, int stage, int micro_batches);

// Forward only (inference, evaluation): receive, forward, send for every micro-batch.
std::vector<PipeInstruction> forward_only_schedule(int stages, int stage, int micro_batches);

// Largest number of micro-batches whose activations a stage holds at once under a schedule.
int max_in_flight(const std::vector<PipeInstruction>& schedule);

std::string schedule_str(const std::vector<PipeInstruction>& schedule);

}  // namespace glmrt
