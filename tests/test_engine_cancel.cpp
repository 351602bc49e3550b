// The generation engine drops a query whose PendingRequest::cancelled turns true (a streaming
// client that went away): between two steps, on every rank, freeing its cache rows at once, with
// on_done getting kCancelled; the other queries are untouched. In-process, one rank (an MPI
// singleton).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>

#include "inference/engine.h"
#include "model/init.h"
#include "parallel/process_groups.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

GlmConfig tiny_config() {
  GlmConfig c = testing::small_glm_config(2);
  c.tokens = TokenIds{.mask = 56, .gmask = 57, .smask = 58, .eod = 59, .sop = 60, .eop = 61,
                      .eos = 62, .pad = 0};
  return c;
}

ProcessGroups& groups() {
  static std::unique_ptr<ProcessGroups> g = [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      // A singleton start forks Open MPI's orted, which refuses root without these.
      setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
      setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
      setenv("OMPI_MCA_pml", "ob1", 0);
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    }
    return ProcessGroups::create(Layout{}, std::chrono::seconds(60));
  }();
  return *g;
}

struct Outcome {
  GenerationResult result;
  int tokens_seen = 0;
};

// Serves queries A (long sampling) and B (short greedy) through one cache row and one query at a
// time, so B runs only once A's row is free. A is cancelled after `cancel_after` of its tokens
// (0: never).
std::pair<Outcome, Outcome> serve_two(GlmModel& model, int cancel_after) {
  EngineOptions opt;
  opt.max_batch = 1;
  opt.max_rows = 1;
  GenerationEngine engine(model, groups(), opt);
  RequestQueue queue;
  auto a = std::make_shared<Outcome>(), b = std::make_shared<Outcome>();

  PendingRequest pa;
  pa.request.prompt_ids = {5, 6, 7, 8, 9, 10, 11};
  pa.request.params.strategy = Strategy::Sample;
  pa.request.params.top_p = 0.0;
  pa.request.params.seed = 11;
  pa.request.params.out_seq_length = 64;
  pa.on_token = [a](int32_t, int64_t) { ++a->tokens_seen; };
  pa.on_done = [a](const GenerationResult& r) { a->result = r; };
  if (cancel_after > 0) pa.cancelled = [a, cancel_after] { return a->tokens_seen >= cancel_after; };

  PendingRequest pb;
  pb.request.prompt_ids = {20, 21, 22, 23, 57};
  pb.request.params.strategy = Strategy::Greedy;
  pb.request.params.out_seq_length = 16;
  pb.on_token = [b](int32_t, int64_t) { ++b->tokens_seen; };
  pb.on_done = [b](const GenerationResult& r) { b->result = r; };

  EXPECT_TRUE(queue.push(std::move(pa)));
  EXPECT_TRUE(queue.push(std::move(pb)));
  queue.close();
  engine.serve(&queue);  // returns once both queries have ended
  return {*a, *b};
}

TEST(EngineCancel, CancelledQueryLeavesBetweenStepsAndFreesItsRows) {
  const GlmConfig c = tiny_config();
  GlmParams params = GlmParams::allocate(c, DType::F32, Device::cpu());
  init_glm_params(params, c, 7);
  GlmModel model(c, std::move(params));

  const auto [a_full, b_full] = serve_two(model, 0);
  ASSERT_TRUE(a_full.result.error.empty()) << a_full.result.error;
  ASSERT_TRUE(b_full.result.error.empty()) << b_full.result.error;
  ASSERT_GT(a_full.tokens_seen, 5) << "query A must run well past the cancellation point";

  const auto [a, b] = serve_two(model, 3);
  EXPECT_EQ(a.result.error, kCancelled);
  EXPECT_EQ(a.tokens_seen, 3) << "the cancellation is seen before the next step";
  ASSERT_TRUE(b.result.error.empty()) << b.result.error;
  EXPECT_EQ(b.result.output_ids, b_full.result.output_ids);
  EXPECT_EQ(b.tokens_seen, b_full.tokens_seen);
}

}  // namespace
}  // namespace glmrt
