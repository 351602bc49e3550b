// The generation engine in-process, on one rank (an MPI singleton):
// - it drops a query whose PendingRequest::cancelled turns true (a streaming client that went
//   away) between two steps, on every rank, freeing its cache rows at once, with on_done getting
//   kCancelled; the other queries are untouched;
// - a query's logprobs are the model's: log-softmax of a full forward pass's logits (float64) at
//   every generated position, whatever the strategy, with the most likely tokens in order.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "inference/engine.h"
#include "kernels/ops.h"
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
  pa.on_token = [a](int32_t, int64_t, const TokenLogprobs*) { ++a->tokens_seen; };
  pa.on_done = [a](const GenerationResult& r) { a->result = r; };
  if (cancel_after > 0) pa.cancelled = [a, cancel_after] { return a->tokens_seen >= cancel_after; };

  PendingRequest pb;
  pb.request.prompt_ids = {20, 21, 22, 23, 57};
  pb.request.params.strategy = Strategy::Greedy;
  pb.request.params.out_seq_length = 16;
  pb.on_token = [b](int32_t, int64_t, const TokenLogprobs*) { ++b->tokens_seen; };
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

// log-softmax (float64) of the last position's logits of a full forward pass over `tokens`, whose
// first `sep` tokens are bidirectional context; positions count on ([gMASK]).
std::vector<double> full_log_softmax(GlmModel& model, const std::vector<int32_t>& tokens, int32_t sep) {
  BatchRows rows;
  rows.tokens = {tokens};
  std::vector<int32_t> positions(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) positions[i] = static_cast<int32_t>(i);
  rows.position_ids = {positions};
  rows.sep = {{sep}};
  const Tensor logits = model.forward(build_batch(rows, model.config(), "test"));
  const int64_t V = model.config().vocab_size, s = static_cast<int64_t>(tokens.size());
  std::vector<double> z(static_cast<size_t>(V));
  for (int64_t v = 0; v < V; ++v) z[static_cast<size_t>(v)] = logits.item((s - 1) * V + v);
  const double m = *std::max_element(z.begin(), z.end());
  double sum = 0;
  for (double x : z) sum += std::exp(x - m);
  for (double& x : z) x -= m + std::log(sum);
  return z;
}

TEST(EngineLogprobs, AreTheModelsLogSoftmaxWithTheTopTokensInOrder) {
  const GlmConfig c = tiny_config();
  GlmParams params = GlmParams::allocate(c, DType::F64, Device::cpu());
  init_glm_params(params, c, 7);
  for (size_t i = 0; i < params.size(); ++i) {  // peaked distributions, not ~uniform ones
    Tensor noise = testing::random_tensor(params.tensor(i).shape(), 70 + static_cast<uint32_t>(i), DType::F64, 0.5);
    scale_add(1.0f, noise, params.tensor(i), params.tensor(i));
  }
  GlmModel model(c, std::move(params));
  GenerationEngine engine(model, groups(), EngineOptions{});

  // No mask in the prompt: [gMASK] and sop are appended, positions count on.
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11};
  GenerationRequest greedy;
  greedy.prompt_ids = prompt;
  greedy.params.strategy = Strategy::Greedy;
  greedy.params.out_seq_length = 9 + 6;
  greedy.params.min_gen_length = 6;  // end tokens banned: six tokens, all with logprobs
  greedy.params.logprobs = 3;
  GenerationRequest sampled = greedy;
  sampled.params.strategy = Strategy::Sample;
  sampled.params.temperature = 0.7;  // logprobs stay the model's, before the temperature
  sampled.params.top_p = 0.9;
  sampled.params.seed = 5;
  sampled.params.logprobs = 0;
  GenerationRequest without = greedy;
  without.params.logprobs = -1;
  const std::vector<GenerationResult> results = engine.generate({greedy, sampled, without});
  ASSERT_EQ(results.size(), 3u);
  EXPECT_TRUE(results[2].logprobs.empty());
  EXPECT_EQ(results[2].spans, results[0].spans) << "asking for logprobs changes no token";

  for (int q = 0; q < 2; ++q) {
    const GenerationResult& r = results[static_cast<size_t>(q)];
    SCOPED_TRACE(q == 0 ? "greedy" : "sampled");
    ASSERT_TRUE(r.error.empty()) << r.error;
    ASSERT_EQ(r.spans.size(), 1u);
    const std::vector<int32_t>& span = r.spans[0];
    ASSERT_EQ(span.size(), 6u);
    ASSERT_EQ(r.logprobs.size(), span.size());
    std::vector<int32_t> tokens = prompt;
    tokens.insert(tokens.end(), {c.tokens.gmask, c.tokens.sop});
    const int32_t sep = static_cast<int32_t>(tokens.size()) - 1;
    for (size_t i = 0; i < span.size(); ++i) {
      const std::vector<double> lp = full_log_softmax(model, tokens, sep);
      const TokenLogprobs& got = r.logprobs[i];
      EXPECT_EQ(got.token, span[i]);
      EXPECT_NEAR(got.logprob, lp[static_cast<size_t>(span[i])], 1e-6) << "token " << i;
      ASSERT_EQ(got.top.size(), q == 0 ? 3u : 0u);
      std::vector<int32_t> order(lp.size());
      for (size_t v = 0; v < lp.size(); ++v) order[v] = static_cast<int32_t>(v);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return lp[a] > lp[b]; });
      for (size_t j = 0; j < got.top.size(); ++j) {
        EXPECT_EQ(got.top[j].first, order[j]) << "token " << i << ", alternative " << j;
        EXPECT_NEAR(got.top[j].second, lp[static_cast<size_t>(order[j])], 1e-6);
      }
      if (q == 0) {  // the most likely token that is no end token (min_gen_length bans them)
        const auto it = std::find_if(order.begin(), order.end(), [&](int32_t t) {
          return t != c.tokens.eop && t != c.tokens.eos;
        });
        EXPECT_EQ(got.token, *it) << "greedy takes the most likely allowed token";
      }
      tokens.push_back(span[i]);
    }
  }
}

}  // namespace
}  // namespace glmrt
