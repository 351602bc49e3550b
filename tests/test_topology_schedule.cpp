// The 3D topology (a golden table of ranks and groups) and the pipeline schedules, simulated for
// every stage at once on one thread: every send meets its receive, no deadlock, warm-up counts,
// activations in flight, and the 1F1B bubble (P−1)/(M+P−1).
#include <deque>
#include <map>

#include "kernels/error.h"
#include "parallel/schedule.h"
#include "parallel/topology.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

TEST(Topology, GoldenTableFor2x2x2) {
  // rank = tp + T·(dp + D·pp)
  const int expected[8][3] = {{0, 0, 0}, {1, 0, 0}, {0, 1, 0}, {1, 1, 0},
                              {0, 0, 1}, {1, 0, 1}, {0, 1, 1}, {1, 1, 1}};
  for (int r = 0; r < 8; ++r) {
    Topology t({2, 2, 2}, 8, r);
    EXPECT_EQ(t.tp_rank(), expected[r][0]) << r;
    EXPECT_EQ(t.dp_rank(), expected[r][1]) << r;
    EXPECT_EQ(t.pp_rank(), expected[r][2]) << r;
  }
  Topology t5({2, 2, 2}, 8, 5);  // tp 1, dp 0, pp 1
  EXPECT_EQ(t5.tp_group(), (std::vector<int>{4, 5}));
  EXPECT_EQ(t5.dp_group(), (std::vector<int>{5, 7}));
  EXPECT_EQ(t5.pp_group(), (std::vector<int>{1, 5}));
  EXPECT_EQ(t5.embedding_group(), (std::vector<int>{1, 5}));
  EXPECT_TRUE(t5.is_last_stage());
}

TEST(Topology, GoldenTableFor4x1x2And1x4x1) {
  Topology a({4, 1, 2}, 8, 6);  // tp 2, dp 1
  EXPECT_EQ(a.tp_group(), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(a.dp_group(), (std::vector<int>{2, 6}));
  EXPECT_EQ(a.pp_group(), (std::vector<int>{6}));
  EXPECT_EQ(a.embedding_group(), (std::vector<int>{6}));
  Topology b({1, 4, 1}, 4, 2);  // a middle stage
  EXPECT_EQ(b.pp_group(), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_TRUE(b.embedding_group().empty());
  EXPECT_EQ(Topology({1, 4, 1}, 4, 3).embedding_group(), (std::vector<int>{0, 3}));
}

TEST(Topology, GlmTrainingLayoutAndErrors) {
  Topology t({4, 8, 24}, 768, 767);
  EXPECT_EQ(t.tp_rank(), 3);
  EXPECT_EQ(t.dp_rank(), 23);
  EXPECT_EQ(t.pp_rank(), 7);
  EXPECT_THROW(Topology({2, 2, 2}, 6, 0), ConfigError);
  EXPECT_EQ(stage_layer_counts(70, 8, {8, 9, 9, 9, 9, 9, 9, 8}).size(), 8u);
  EXPECT_THROW(stage_layer_counts(70, 8, {}), ConfigError);
  EXPECT_THROW(stage_layer_counts(70, 8, {9, 9, 9, 9, 9, 9, 9, 9}), ConfigError);
  EXPECT_EQ(stage_layer_counts(8, 4, {}), (std::vector<int64_t>{2, 2, 2, 2}));
}

// Runs all stages' schedules together. Forward and backward take one time unit each; messages
// arrive instantly. Returns the makespan; fails the test on a deadlock or a mismatched message.
int simulate(int p, int m, bool training) {
  std::vector<std::vector<PipeInstruction>> sched;
  for (int s = 0; s < p; ++s)
    sched.push_back(training ? one_f_one_b_schedule(p, s, m) : forward_only_schedule(p, s, m));
  // channels[(from, to, kind)] holds (micro_batch, time sent)
  std::map<std::tuple<int, int, int>, std::deque<std::pair<int, int>>> channels;
  std::vector<size_t> pc(p, 0);
  std::vector<int> clock(p, 0);
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      while (pc[s] < sched[s].size()) {
        const PipeInstruction& in = sched[s][pc[s]];
        if (in.op == PipeOp::RecvActivation || in.op == PipeOp::RecvGrad) {
          const bool act = in.op == PipeOp::RecvActivation;
          auto& q = channels[{act ? s - 1 : s + 1, s, act ? 0 : 1}];
          if (q.empty()) break;  // blocked: try the other stages
          EXPECT_EQ(q.front().first, in.micro_batch) << "stage " << s << " received out of order";
          clock[s] = std::max(clock[s], q.front().second);
          q.pop_front();
        } else if (in.op == PipeOp::SendActivation) {
          channels[{s, s + 1, 0}].push_back({in.micro_batch, clock[s]});
        } else if (in.op == PipeOp::SendGrad) {
          channels[{s, s - 1, 1}].push_back({in.micro_batch, clock[s]});
        } else if (in.op == PipeOp::Forward || in.op == PipeOp::Backward) {
          clock[s] += 1;
        }
        ++pc[s];
        progress = true;
      }
    }
  }
  for (int s = 0; s < p; ++s)
    EXPECT_EQ(pc[s], sched[s].size()) << "deadlock: stage " << s << " stuck at "
                                      << (pc[s] < sched[s].size() ? pipe_op_name(sched[s][pc[s]].op) : "end")
                                      << " (p=" << p << ", m=" << m << ")";
  for (const auto& [key, q] : channels) EXPECT_TRUE(q.empty()) << "a message was never received";
  return *std::max_element(clock.begin(), clock.end());
}

TEST(Schedule, OneFOneBForEveryShapeUpTo8StagesAnd16MicroBatches) {
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 16; ++m) {
      for (int s = 0; s < p; ++s) {
        const auto sched = one_f_one_b_schedule(p, s, m);
        // Warm-up: min(p - s - 1, m) forwards, then (if any is left) the first steady forward,
        // before the first backward.
        int forwards_before_backward = 0;
        for (const auto& in : sched) {
          if (in.op == PipeOp::Backward) break;
          forwards_before_backward += in.op == PipeOp::Forward;
        }
        EXPECT_EQ(forwards_before_backward, std::min(p - s - 1, m) + (m > p - s - 1 ? 1 : 0))
            << p << " " << s << " " << m;
        EXPECT_EQ(max_in_flight(sched), std::min(p - s, m));
        EXPECT_EQ(std::count_if(sched.begin(), sched.end(), [](auto& i) { return i.op == PipeOp::Forward; }), m);
        EXPECT_EQ(sched.back().op, PipeOp::OptimizerStep);
      }
      const int makespan = simulate(p, m, true);
      // Ideal: 2m units per stage; 1F1B adds 2(p - 1): bubble (p - 1) / (m + p - 1).
      EXPECT_EQ(makespan, 2 * (m + p - 1)) << "p=" << p << " m=" << m;
      const double bubble = 1.0 - 2.0 * m / makespan;
      EXPECT_NEAR(bubble, static_cast<double>(p - 1) / (m + p - 1), 1e-12);
    }
}

TEST(Schedule, ForwardOnly) {
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 16; ++m) EXPECT_EQ(simulate(p, m, false), m + p - 1);
  EXPECT_EQ(schedule_str(forward_only_schedule(2, 1, 2)),
            "recv-act(0) forward(0) recv-act(1) forward(1)");
  EXPECT_EQ(schedule_str(one_f_one_b_schedule(2, 0, 2)),
            "forward(0) send-act(0) forward(1) send-act(1) recv-grad(0) backward(0) recv-grad(1) "
            "backward(1) reduce-grads optimizer-step");
}

}  // namespace
}  // namespace glmrt
