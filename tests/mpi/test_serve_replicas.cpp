// The serving engine (GenerationEngine::serve) on every layout; with data-parallel replicas,
// world rank 0 routes the queries among them (inference/replicas.h). Half the queries are queued
// before the engine starts, the other half arrive from another thread while it runs. Checked:
// every query is answered exactly as GenerationEngine::generate answers it on the same layout
// (output ids, spans, log-probabilities), the streamed tokens add up to the spans in order with
// the same log-probabilities, every replica answers its share, a query whose client goes away is
// dropped with kCancelled on whichever replica holds it (also while that replica is full), a
// query the engine refuses gets its error, and serve() returns on every rank once the queue is
// closed and drained.
#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>
#include <numeric>
#include <thread>

#include "inference/engine.h"
#include "model/init.h"
#include "parallel/process_groups.h"
#include "tests/mpi/mpi_test_env.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::g_layout;
using testing::layout_model;

constexpr int32_t kMask = 56, kGmask = 57, kSmask = 58;

GlmConfig serve_config() {
  GlmConfig c = testing::small_glm_config(4);
  c.tokens = TokenIds{kMask, kGmask, kSmask, 59, 60, 61, 55, 0};
  // Room for the cancelled queries: hundreds of steps of ~50 µs, where a cancellation takes a
  // millisecond or two to reach another replica (rank 0 polls every millisecond).
  c.max_sequence_length = 512;
  return c;
}

// 16 queries: [MASK], [sMASK] and [gMASK] prompts of several lengths; greedy, seeded sampling
// (some with log-probabilities) and beam search.
std::vector<GenerationRequest> queries() {
  std::vector<GenerationRequest> out;
  for (int i = 0; i < 16; ++i) {
    GenerationRequest r;
    const int len = 3 + (i * 5) % 11;
    for (int t = 0; t < len; ++t) r.prompt_ids.push_back((i * 7 + t * 3) % 50 + 1);
    if (i % 3 == 1) r.prompt_ids.insert(r.prompt_ids.begin() + len / 2, kMask);
    if (i % 3 == 2) r.prompt_ids.insert(r.prompt_ids.begin() + 1, kSmask);
    if (i % 3 == 0) r.prompt_ids.push_back(kGmask);
    GenerationParams& p = r.params;
    p.out_seq_length = 24 + i % 4 * 4;
    p.min_gen_length = 2;
    if (i % 4 == 1) {
      p.strategy = Strategy::Sample;
      p.seed = 100 + static_cast<uint64_t>(i);
      p.temperature = 0.9;
      p.top_k = 20;
      p.top_p = 0.95;
      p.logprobs = i % 8 == 1 ? 2 : -1;
    } else if (i % 4 == 3) {
      p.strategy = Strategy::Beam;
      p.num_beams = 2;
      p.no_repeat_ngram_size = 2;
    } else {
      p.strategy = Strategy::Greedy;
      p.logprobs = i % 8 == 0 ? 1 : -1;
    }
    out.push_back(std::move(r));
  }
  return out;
}

struct Outcome {
  GenerationResult result;
  bool done = false;
  std::vector<std::vector<int32_t>> streamed;  // per blank
  std::vector<TokenLogprobs> streamed_logprobs;
};

bool same_logprobs(const std::vector<TokenLogprobs>& a, const std::vector<TokenLogprobs>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].token != b[i].token || a[i].logprob != b[i].logprob || a[i].top != b[i].top) return false;
  return true;
}

TEST(ServeReplicas, EveryQueryAnsweredAsGenerateAnswersIt) {
  const GlmConfig c = serve_config();
  auto groups = ProcessGroups::create(g_layout, std::chrono::seconds(60));
  const Topology& topo = groups->topo;
  GlmModel model = layout_model(c, *groups, 9);
  // One query in flight per replica (two cache rows, for the beam queries): a replica is full
  // while it streams, and its tokens must still reach rank 0 step by step (the cancelled queries
  // below run to their end otherwise).
  EngineOptions opt;
  opt.max_batch = 1;
  opt.max_rows = 2;
  GenerationEngine engine(model, *groups, opt);

  const std::vector<GenerationRequest> reqs = queries();
  const std::vector<GenerationResult> want = engine.generate(reqs);
  const bool root = topo.rank() == 0;
  const int replicas = g_layout.data;

  // The queries, then one the engine refuses (a token outside the vocabulary), then one long
  // sampled query per replica whose client goes away after 3 tokens.
  const size_t n = reqs.size(), refused = n, first_cancel = n + 1;
  auto outcomes = std::make_shared<std::vector<Outcome>>(n + 1 + static_cast<size_t>(replicas));
  RequestQueue queue;
  auto pending = [&](size_t i, const GenerationRequest& r) {
    PendingRequest p;
    p.request = r;
    p.on_token = [outcomes, i](int32_t token, int64_t blank, const TokenLogprobs* lp) {
      Outcome& o = (*outcomes)[i];
      if (o.streamed.size() <= static_cast<size_t>(blank)) o.streamed.resize(static_cast<size_t>(blank) + 1);
      o.streamed[static_cast<size_t>(blank)].push_back(token);
      if (lp) o.streamed_logprobs.push_back(*lp);
    };
    p.on_done = [outcomes, i](const GenerationResult& res) {
      (*outcomes)[i].result = res;
      (*outcomes)[i].done = true;
    };
    if (i >= first_cancel)
      p.cancelled = [outcomes, i] {
        const auto& s = (*outcomes)[i].streamed;
        return !s.empty() && s[0].size() >= 3;
      };
    return p;
  };
  std::thread late;
  std::vector<int64_t> answered;
  if (root) {
    // Pushed together, the long queries go one to each replica (ties are taken in turn).
    for (int d = 0; d < replicas; ++d) {
      GenerationRequest r;
      r.prompt_ids = {5, 9, 13, kGmask};
      r.params.strategy = Strategy::Sample;
      r.params.seed = 7 + static_cast<uint64_t>(d);
      r.params.out_seq_length = 500;
      r.params.min_gen_length = 480;
      ASSERT_TRUE(queue.push(pending(first_cancel + static_cast<size_t>(d), r)));
    }
    for (size_t i = 0; i < n / 2; ++i) ASSERT_TRUE(queue.push(pending(i, reqs[i])));
    late = std::thread([&] {
      for (size_t i = n / 2; i < n; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        queue.push(pending(i, reqs[i]));
      }
      GenerationRequest bad;
      bad.prompt_ids = {1, 2, 999, kGmask};
      queue.push(pending(refused, bad));
      queue.close();
    });
    answered = engine.serve(&queue);
    late.join();
  } else {
    answered = engine.serve(nullptr);
  }
  if (!root) {
    EXPECT_TRUE(answered.empty());
    return;
  }

  ASSERT_EQ(answered.size(), static_cast<size_t>(replicas));
  EXPECT_EQ(std::accumulate(answered.begin(), answered.end(), int64_t{0}),
            static_cast<int64_t>(outcomes->size()));
  for (int d = 0; d < replicas; ++d) EXPECT_GE(answered[static_cast<size_t>(d)], 2) << "replica " << d;
  for (size_t i = 0; i < n; ++i) {
    const Outcome& o = (*outcomes)[i];
    SCOPED_TRACE("query " + std::to_string(i));
    ASSERT_TRUE(o.done);
    ASSERT_TRUE(o.result.error.empty()) << o.result.error;
    EXPECT_EQ(o.result.output_ids, want[i].output_ids);
    EXPECT_EQ(o.result.spans, want[i].spans);
    EXPECT_EQ(o.result.generated_tokens, want[i].generated_tokens);
    EXPECT_EQ(o.result.finish_reason, want[i].finish_reason);
    EXPECT_TRUE(same_logprobs(o.result.logprobs, want[i].logprobs));
    if (reqs[i].params.strategy != Strategy::Beam) {
      EXPECT_EQ(o.streamed, o.result.spans);
      EXPECT_TRUE(same_logprobs(o.streamed_logprobs, o.result.logprobs));
    }
  }
  ASSERT_TRUE((*outcomes)[refused].done);
  EXPECT_NE((*outcomes)[refused].result.error.find("outside the vocabulary"), std::string::npos)
      << (*outcomes)[refused].result.error;
  for (int d = 0; d < replicas; ++d) {
    const Outcome& o = (*outcomes)[first_cancel + static_cast<size_t>(d)];
    SCOPED_TRACE("cancelled query " + std::to_string(d) + ": streamed blanks " + std::to_string(o.streamed.size()) +
                 ", first " + std::to_string(o.streamed.empty() ? 0 : o.streamed[0].size()) + ", spans " +
                 std::to_string(o.result.spans.size()) + ", generated " + std::to_string(o.result.generated_tokens));
    ASSERT_TRUE(o.done);
    EXPECT_EQ(o.result.error, kCancelled);
    ASSERT_EQ(o.streamed.size(), 1u);
    EXPECT_GE(o.streamed[0].size(), 3u);
    EXPECT_LT(o.streamed[0].size(), 240u);  // dropped long before its 480 tokens
  }
}

}  // namespace
}  // namespace glmrt
