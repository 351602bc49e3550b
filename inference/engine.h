// The generation engine: many queries in flight at once over a tensor + pipeline parallel model
// replica, each filled blank by blank (inference/SEMANTICS.md) with a KV cache per sequence.
//
// Every rank of a model replica runs the same engine loop. The replica's root (tensor and
// pipeline rank 0; world rank 0 for replica 0) owns its queries: each step it broadcasts what
// changed (new queries, shutdown) over the replica; every rank then plans the same step from the
// same state; the step runs as a forward-only pipeline over micro-batches of rows; the last
// stage picks the next tokens and broadcasts its decisions, which every rank applies. So all
// ranks hold the same bookkeeping and no rank ever waits on a message that is not coming.
// Data-parallel replicas generate independently (generate() shares the queries out; serve()
// routes them as they come, inference/replicas.h).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "inference/generation.h"
#include "inference/request_queue.h"
#include "model/glm_model.h"
#include "parallel/process_groups.h"

namespace glmrt {

struct EngineOptions {
  int64_t max_batch = 16;    // queries in flight at once (beam search counts num_beams rows each)
  int micro_batches = 0;     // pipeline micro-batches per step; 0 = one per pipeline stage
  int64_t max_rows = 0;      // KV cache rows (a beam query takes num_beams); 0 = default_cache_rows
                             // (max_batch, GenerationParams{})
  int64_t capacity = 0;      // tokens per cache row; 0 = the model's max_sequence_length
};

// Where the time went (world rank 0's clock): steps that prefill at least one context, and
// steps that only decode (one token per running row).
struct EngineStats {
  int64_t prefill_steps = 0, prefill_tokens = 0;
  double prefill_seconds = 0;
  int64_t decode_steps = 0, decode_tokens = 0;
  double decode_seconds = 0;
  int64_t queries = 0;  // queries answered (results delivered, errors included) by this replica
};

// KV cache rows for `max_batch` queries in flight whose parameters default to `defaults`: one row
// per query (num_beams for beam search), and at least num_beams, so that one beam query always
// fits. Queries that need more rows than are free wait for them.
int64_t default_cache_rows(int64_t max_batch, const GenerationParams& defaults);

class GenerationEngine {
 public:
  GenerationEngine(GlmModel& model, ProcessGroups& groups, EngineOptions options);
  ~GenerationEngine();

  // Collective over the job. On world rank 0, `requests` are the queries (ignored elsewhere);
  // returns their results in order on world rank 0 (empty elsewhere). With data-parallel
  // replicas each generates its own share of the queries (the longest first, each to the replica
  // with the least work so far); `on_token` then sees replica 0's queries only. A query that fails
  // (e.g. a prompt longer than the model's max_sequence_length) gets result.error and does not
  // stop the others. `on_token(query, token, blank)` (rank 0, may be empty) sees every
  // generated token of sampling/greedy queries as it is chosen.
  std::vector<GenerationResult> generate(
      const std::vector<GenerationRequest>& requests,
      const std::function<void(size_t query, int32_t token, int64_t blank)>& on_token = {});

  // Collective over the job: serves the queries pushed into `queue` (world rank 0 passes it,
  // every other rank passes nullptr) until the queue is closed and every query in flight has
  // ended. Queries are admitted between steps, up to max_batch at once per replica. With
  // data-parallel replicas rank 0 routes each query to the replica with the fewest in flight
  // (inference/replicas.h). Between queries each replica's root keeps its ranks informed at
  // least every 100 ms, so an idle server never trips the communicators' deadlines. Returns, on
  // world rank 0, the number of queries each replica answered (empty elsewhere).
  std::vector<int64_t> serve(RequestQueue* queue);

  // Checks a query against the model before it is queued (prompt length, ids in the
  // vocabulary, parameters); returns "" when it is fine, else a message naming the problem.
  static std::string check_request(const GenerationRequest& r, const GlmConfig& config);

  const EngineStats& stats() const;
  void reset_stats();

 private:
  // generate() on this rank's replica alone (its root holds `requests`).
  std::vector<GenerationResult> generate_here(
      const std::vector<GenerationRequest>& requests,
      const std::function<void(size_t query, int32_t token, int64_t blank)>& on_token);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glmrt
