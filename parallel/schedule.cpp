#include "parallel/schedule.h"

#include <algorithm>

#include "kernels/error.h"

namespace glmrt {

const char* pipe_op_name(PipeOp op) {
  switch (op) {
    case PipeOp::RecvActivation: return "recv-act";
    case PipeOp::Forward: return "forward";
    case PipeOp::SendActivation: return "send-act";
    case PipeOp::RecvGrad: return "recv-grad";
    case PipeOp::Backward: return "backward";
    case PipeOp::SendGrad: return "send-grad";
    case PipeOp::ReduceGrads: return "reduce-grads";
    case PipeOp::OptimizerStep: return "optimizer-step";
  }
  return "?";
}

namespace {
void check_args(int stages, int stage, int micro_batches) {
  GLMRT_CHECK(stages >= 1 && stage >= 0 && stage < stages && micro_batches >= 1,
              "schedule for stage ", stage, " of ", stages, " with ", micro_batches,
              " micro-batches");
}

void add_forward(std::vector<PipeInstruction>& s, int stages, int stage, int mb) {
  if (stage > 0) s.push_back({PipeOp::RecvActivation, mb});
  s.push_back({PipeOp::Forward, mb});
  if (stage < stages - 1) s.push_back({PipeOp::SendActivation, mb});
}

void add_backward(std::vector<PipeInstruction>& s, int stages, int stage, int mb) {
  if (stage < stages - 1) s.push_back({PipeOp::RecvGrad, mb});
  s.push_back({PipeOp::Backward, mb});
  if (stage > 0) s.push_back({PipeOp::SendGrad, mb});
}
}  // namespace

std::vector<PipeInstruction> one_f_one_b_schedule(int stages, int stage, int micro_batches) {
  check_args(stages, stage, micro_batches);
  std::vector<PipeInstruction> s;
  const int warmup = std::min(stages - stage - 1, micro_batches);
  const int steady = micro_batches - warmup;
  for (int i = 0; i < warmup; ++i) add_forward(s, stages, stage, i);
  for (int j = 0; j < steady; ++j) {
    add_forward(s, stages, stage, warmup + j);
    add_backward(s, stages, stage, j);
  }
  for (int b = steady; b < micro_batches; ++b) add_backward(s, stages, stage, b);
  s.push_back({PipeOp::ReduceGrads, -1});
  s.push_back({PipeOp::OptimizerStep, -1});
  return s;
}

std::vector<PipeInstruction> forward_only_schedule(int stages, int stage, int micro_batches) {
  check_args(stages, stage, micro_batches);
  std::vector<PipeInstruction> s;
  for (int i = 0; i < micro_batches; ++i) add_forward(s, stages, stage, i);
  return s;
}

int max_in_flight(const std::vector<PipeInstruction>& schedule) {
  int live = 0, peak = 0;
  for (const PipeInstruction& in : schedule) {
    if (in.op == PipeOp::Forward) peak = std::max(peak, ++live);
    if (in.op == PipeOp::Backward) --live;
  }
  return peak;
}

std::string schedule_str(const std::vector<PipeInstruction>& schedule) {
  std::string out;
  for (const PipeInstruction& in : schedule) {
    if (!out.empty()) out += " ";
    out += pipe_op_name(in.op);
    if (in.micro_batch >= 0) {  // appended piece by piece: GCC 12 warns on "(" + std::string&&
      out += '(';
      out += std::to_string(in.micro_batch);
      out += ')';
    }
  }
  return out;
}

}  // namespace glmrt
