#include "inference/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>

#include "inference/blank_filling.h"
#include "inference/pipeline_forward.h"
#include "inference/replicas.h"
#include "inference/strategies.h"
#include "inference/wire.h"
#include "kernels/ops.h"

namespace glmrt {

namespace {

using namespace wire;

// One query in flight. Every rank holds the same copy; only the deciding rank (the last
// stage's tensor-parallel rank 0) runs its beam search.
struct Query {
  uint64_t id = 0;
  GenerationParams p;
  PreparedPrompt prompt;
  BlankContext blank;
  int64_t blank_index = 0;
  std::vector<int32_t> rows;  // cache rows it owns (1, or num_beams)
  int64_t active = 1;         // rows in use in this blank (beams alive)
  std::vector<int32_t> last;  // per active row: the token to feed next
  std::vector<int32_t> gen;   // greedy/sampling: this blank's tokens so far
  bool prefilled = false;
  int64_t step = 0;           // tokens generated in this blank
  std::unique_ptr<BeamSearch> beam;
  std::vector<std::vector<int32_t>> spans;
  std::vector<TokenLogprobs> logprobs;  // logprobs >= 0: per token of the spans so far
  int64_t generated_total = 0;
  std::string finish_reason;
  std::string error;
  bool finished = false;
};

int64_t rows_needed(const GenerationParams& p) {
  return p.strategy == Strategy::Beam ? p.num_beams : 1;
}

template <class T>
void broadcast_vector(Communicator& comm, std::vector<T>& v, int root, DType dtype) {
  Tensor size = Tensor::empty({1}, DType::I64);
  size.data_as<int64_t>()[0] = static_cast<int64_t>(v.size());
  comm.broadcast(size, root);
  const int64_t n = size.data_as<int64_t>()[0];
  if (comm.rank() != root) v.resize(static_cast<size_t>(n));
  if (n == 0) return;
  Tensor t = Tensor::wrap(v.data(), {n}, dtype, nullptr);
  comm.broadcast(t, root);
}

void send_vector(MpiCommunicator& comm, const std::vector<int64_t>& v, int peer) {
  Tensor size = Tensor::empty({1}, DType::I64);
  size.data_as<int64_t>()[0] = static_cast<int64_t>(v.size());
  comm.send(size, peer);
  if (!v.empty()) comm.send(Tensor::wrap(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, DType::I64, nullptr), peer);
  comm.wait_sends();
}
std::vector<int64_t> recv_vector(MpiCommunicator& comm, int peer) {
  Tensor size = Tensor::empty({1}, DType::I64);
  comm.recv(size, peer);
  std::vector<int64_t> v(static_cast<size_t>(size.data_as<int64_t>()[0]));
  if (!v.empty()) {
    Tensor t = Tensor::wrap(v.data(), {static_cast<int64_t>(v.size())}, DType::I64, nullptr);
    comm.recv(t, peer);
  }
  return v;
}

// Which replica answers each query: longest first (prompt + out_seq_length, × beams), each to the
// replica with the least work so far (ties: the lower one), so that replicas end close together.
std::vector<int> assign_replicas(const std::vector<GenerationRequest>& requests, int replicas) {
  std::vector<size_t> order(requests.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto cost = [&](size_t i) {
    const GenerationParams& p = requests[i].params;
    return (static_cast<int64_t>(requests[i].prompt_ids.size()) + p.out_seq_length) *
           (p.strategy == Strategy::Beam ? p.num_beams : 1);
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost(a) > cost(b); });
  std::vector<int64_t> load(static_cast<size_t>(replicas), 0);
  std::vector<int> replica(requests.size(), 0);
  for (size_t i : order) {
    const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    replica[i] = r;
    load[static_cast<size_t>(r)] += cost(i);
  }
  return replica;
}

// Where the tokens of one micro-batch come from.
struct MicroBatch {
  std::vector<Query*> queries;
  std::vector<int32_t> tokens, positions, index, logit_tokens;
  CachedBatch batch;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
struct GenerationEngine::Impl {
  // What rank 0 knows about a query beyond the replicated state.
  struct Callbacks {
    std::function<void(int32_t, int64_t, const TokenLogprobs*)> on_token;
    std::function<void(const GenerationResult&)> on_done;
    std::function<bool()> cancelled;
  };
  // Where rank 0 gets queries from.
  struct Source {
    std::function<std::vector<PendingRequest>(size_t max, bool idle)> take;
    std::function<bool()> exhausted;  // no query will come any more
    std::function<void()> pump;       // may be empty: called at the start of every step
  };

  GlmModel& model;
  ProcessGroups& g;
  EngineOptions opt;
  const GlmConfig& cfg;
  int64_t rows_total = 0, capacity = 0, max_length = 0;
  KvCache cache;
  std::vector<int32_t> table;      // [rows_total, capacity]: slot of key j of row r
  std::vector<int32_t> free_rows;  // identical on every rank
  std::vector<std::unique_ptr<Query>> active;
  int decider = 0;
  bool root = false, deciding = false;
  uint64_t next_id = 0;
  std::map<uint64_t, Callbacks> callbacks;                   // rank 0
  std::vector<PendingRequest> held;                          // rank 0: taken, waiting for rows
  EngineStats stats;
  // GLMRT_CUDA_PROFILE_STEPS=A-B (or A): decoding steps A..B (from 1) inside the CUDA profiler's
  // capture range, for `ncu --profile-from-start off` (bench/gpu_decode_profile.sh); 0: none.
  int64_t profile_first = 0, profile_last = 0;

  Impl(GlmModel& m, ProcessGroups& groups, EngineOptions o)
      : model(m), g(groups), opt(o), cfg(m.config()) {
    const Layout& L = g.topo.layout();
    GLMRT_CHECK(opt.max_batch >= 1, "max_batch must be >= 1, got ", opt.max_batch);
    rows_total = opt.max_rows > 0 ? opt.max_rows : default_cache_rows(opt.max_batch, GenerationParams{});
    capacity = opt.capacity > 0 ? std::min(opt.capacity, cfg.max_sequence_length) : cfg.max_sequence_length;
    max_length = capacity;
    try {
      cache = KvCache::allocate(cfg, model.shard(), rows_total, capacity, model.dtype(), model.device());
    } catch (const std::exception& e) {
      throw ConfigError(detail::concat(
          "cannot allocate the KV cache: ", rows_total, " rows x ", capacity, " tokens = ",
          KvCache::bytes_for(cfg, model.shard(), rows_total, capacity, model.dtype()) >> 20,
          " MiB on ", model.device().str(), " (", e.what(),
          "); lower --max-rows, --max-batch or --cache-length"));
    }
    table.assign(static_cast<size_t>(rows_total * capacity), 0);
    for (int64_t r = rows_total; r-- > 0;) free_rows.push_back(static_cast<int32_t>(r));
    // Ranks within the replica (ProcessGroups::replica): tp + tensor · pp.
    const Coordinates c = g.topo.coords();
    decider = L.tensor * (L.pipeline - 1);
    root = c.tp == 0 && c.pp == 0;
    deciding = c.tp == 0 && c.pp == L.pipeline - 1;
    if (const char* steps = std::getenv("GLMRT_CUDA_PROFILE_STEPS"); steps && *steps) {
      long long first = 0, last = 0;
      int used = 0;
      const int got = std::sscanf(steps, "%lld%n-%lld%n", &first, &used, &last, &used);
      if (got == 1) last = first;
      if (got < 1 || steps[used] != '\0' || first < 1 || last < first)
        throw ConfigError(detail::concat("GLMRT_CUDA_PROFILE_STEPS=", steps,
                                         ": expected A-B or A, decoding steps counted from 1 (A <= B)"));
      profile_first = first;
      profile_last = last;
    }
  }

  // ---- rank 0: results
  void deliver(uint64_t id, const GenerationResult& r) {
    auto it = callbacks.find(id);
    if (it == callbacks.end()) return;
    ++stats.queries;
    if (it->second.on_done) it->second.on_done(r);
    callbacks.erase(it);
  }

  // Starts the query's next blank that needs generating; finishes the query when none is left.
  // Replicated: runs identically on every rank.
  void advance(Query& q) {
    while (true) {
      std::optional<BlankContext> b;
      try {
        b = next_blank(q.prompt, cfg.tokens.sop, q.p.out_seq_length, max_length);
      } catch (const InputError& e) {
        q.error = e.what();
        q.finished = true;
        return;
      }
      if (!b) {
        q.finished = true;
        return;
      }
      q.blank = std::move(*b);
      q.prefilled = false;
      q.step = 0;
      q.active = 1;
      q.gen.clear();
      q.last.clear();
      q.beam.reset();
      if (q.blank.context_length() < q.blank.limit) {
        if (deciding && q.p.strategy == Strategy::Beam)
          q.beam = std::make_unique<BeamSearch>(q.p, cfg.tokens, q.blank.tokens, q.blank_index);
        return;
      }
      // No room to generate: the blank gets an empty span.
      finish_blank(q, {}, "length");
    }
  }

  void finish_blank(Query& q, const std::vector<int32_t>& span, const std::string& reason) {
    q.spans.push_back(span);
    q.generated_total += static_cast<int64_t>(span.size());
    q.finish_reason = reason;
    fill_blank(q.prompt, q.blank, span);
    ++q.blank_index;
  }

  void end_query(Query& q) {
    for (int32_t r : q.rows) free_rows.push_back(r);
    std::sort(free_rows.begin(), free_rows.end(), std::greater<>());
    q.rows.clear();
    if (!root) return;
    GenerationResult r;
    if (!q.error.empty()) {
      r.error = q.error;
    } else {
      r.output_ids = answer_ids(q.prompt, cfg.tokens);
      r.spans = q.spans;
      r.generated_tokens = q.generated_total;
      r.finish_reason = q.finish_reason.empty() ? "stop" : q.finish_reason;
      r.logprobs = q.logprobs;
    }
    deliver(q.id, r);
  }

  // ---- 1. Control: rank 0 drops cancelled queries and admits new ones; every rank learns both.
  // Message: [shutdown, admitted count, cancelled count, cancelled ids..., admitted queries...].
  // Returns false at shutdown.
  bool exchange_control(Source& src) {
    std::vector<int64_t> ctl;
    if (root) {
      if (src.pump) src.pump();
      std::vector<int64_t> cancelled;
      for (const auto& q : active) {
        const auto it = callbacks.find(q->id);
        if (it != callbacks.end() && it->second.cancelled && it->second.cancelled())
          cancelled.push_back(static_cast<int64_t>(q->id));
      }
      size_t still_held = 0;
      for (size_t i = 0; i < held.size(); ++i) {  // taken but not admitted yet: answered here
        if (held[i].cancelled && held[i].cancelled()) {
          GenerationResult res;
          res.error = kCancelled;
          ++stats.queries;
          if (held[i].on_done) held[i].on_done(res);
        } else {
          if (still_held != i) held[still_held] = std::move(held[i]);  // (a self-move empties it)
          ++still_held;
        }
      }
      held.resize(still_held);
      const size_t room = static_cast<size_t>(opt.max_batch) - std::min(active.size(), static_cast<size_t>(opt.max_batch));
      if (held.size() < room) {
        for (PendingRequest& r : src.take(room - held.size(), active.empty() && held.empty()))
          held.push_back(std::move(r));
      }
      std::vector<int64_t> admitted;
      int64_t count = 0, free = static_cast<int64_t>(free_rows.size());
      size_t kept = 0;
      for (size_t i = 0; i < held.size(); ++i) {
        PendingRequest& r = held[i];
        const uint64_t id = next_id;
        std::string problem = check_request(r.request, cfg);
        if (problem.empty() && rows_needed(r.request.params) > rows_total)
          problem = detail::concat("num_beams ", r.request.params.num_beams, " needs more cache rows than the ",
                                   rows_total, " this server has");
        if (!problem.empty()) {
          GenerationResult res;
          res.error = problem;
          ++stats.queries;
          if (r.on_done) r.on_done(res);
          continue;
        }
        const int64_t need = rows_needed(r.request.params);
        if (need > free || static_cast<size_t>(count) + active.size() >= static_cast<size_t>(opt.max_batch)) {
          if (kept != i) held[kept] = std::move(r);  // (a self-move would empty its prompt)
          ++kept;
          continue;
        }
        free -= need;
        ++next_id;
        ++count;
        admitted.push_back(static_cast<int64_t>(id));
        put_ints(admitted, r.request.prompt_ids);
        put_params(admitted, r.request.params);
        callbacks[id] = {std::move(r.on_token), std::move(r.on_done), std::move(r.cancelled)};
      }
      held.resize(kept);
      const bool shutdown = count == 0 && active.empty() && held.empty() && src.exhausted();
      ctl.push_back(shutdown ? 1 : 0);
      ctl.push_back(count);
      ctl.push_back(static_cast<int64_t>(cancelled.size()));
      ctl.insert(ctl.end(), cancelled.begin(), cancelled.end());
      ctl.insert(ctl.end(), admitted.begin(), admitted.end());
    }
    broadcast_vector(*g.replica, ctl, 0, DType::I64);
    if (ctl[0] != 0) return false;
    const int64_t* q = ctl.data() + 3;
    if (ctl[2] > 0) {  // cancelled queries leave between steps, freeing their rows
      const std::set<int64_t> gone(q, q + ctl[2]);
      q += ctl[2];
      std::vector<std::unique_ptr<Query>> still;
      for (auto& query : active) {
        if (gone.count(static_cast<int64_t>(query->id))) {
          query->error = kCancelled;
          end_query(*query);
        } else {
          still.push_back(std::move(query));
        }
      }
      active = std::move(still);
    }
    for (int64_t i = 0; i < ctl[1]; ++i) {
      auto query = std::make_unique<Query>();
      query->id = static_cast<uint64_t>(*q++);
      std::vector<int32_t> ids = get_ints(q);
      query->p = get_params(q);
      query->prompt = prepare_prompt(ids, cfg.tokens);
      for (int64_t r = 0; r < rows_needed(query->p); ++r) {
        query->rows.push_back(free_rows.back());
        free_rows.pop_back();
      }
      advance(*query);
      if (query->finished) end_query(*query);
      else active.push_back(std::move(query));
    }
    return true;
  }

  // ---- 2. Plan: the tokens each query feeds this step, split into micro-batches.
  std::vector<MicroBatch> plan() {
    const int stages = g.topo.layout().pipeline;
    const int64_t want = opt.micro_batches > 0 ? opt.micro_batches : stages;
    const int64_t m = std::min<int64_t>(want, static_cast<int64_t>(active.size()));
    int64_t total = 0;
    std::vector<int64_t> cost;
    for (const auto& q : active) {
      cost.push_back(q->prefilled ? q->active : q->blank.context_length());
      total += cost.back();
    }
    std::vector<MicroBatch> mbs(static_cast<size_t>(m));
    int64_t acc = 0;
    size_t j = 0;
    for (size_t i = 0; i < active.size(); ++i) {
      // Move on once this micro-batch has its share, leaving a query for every later one.
      const size_t left_queries = active.size() - i, left_batches = mbs.size() - j - 1;
      if (j + 1 < mbs.size() && !mbs[j].queries.empty() &&
          (acc >= total * static_cast<int64_t>(j + 1) / m || left_queries <= left_batches))
        ++j;
      acc += cost[i];
      Query& q = *active[i];
      MicroBatch& mb = mbs[j];
      mb.queries.push_back(&q);
      auto add = [&](int32_t token, int32_t position, int32_t row, int64_t pos, int64_t visible) {
        mb.tokens.push_back(token);
        mb.positions.push_back(position);
        mb.index.insert(mb.index.end(), {row, static_cast<int32_t>(pos), static_cast<int32_t>(visible)});
        table[static_cast<size_t>(row * capacity + pos)] = row;
      };
      if (!q.prefilled) {
        const int32_t row = q.rows[0];
        const int64_t ctx = q.blank.context_length();
        for (int64_t p = 0; p < ctx; ++p)
          add(q.blank.tokens[static_cast<size_t>(p)], q.blank.positions[static_cast<size_t>(p)], row,
              p, std::max(q.blank.sep, p + 1));
        mb.logit_tokens.push_back(static_cast<int32_t>(mb.tokens.size() - 1));
      } else {
        const int64_t pos = q.blank.context_length() + q.step - 1;
        for (int64_t b = 0; b < q.active; ++b) {
          add(q.last[static_cast<size_t>(b)], q.blank.generated_position(q.step - 1), q.rows[static_cast<size_t>(b)],
              pos, pos + 1);
          mb.logit_tokens.push_back(static_cast<int32_t>(mb.tokens.size() - 1));
        }
      }
    }
    const Tensor table_tensor = Tensor::from_ints(table, {rows_total, capacity});
    for (MicroBatch& mb : mbs) {
      const int64_t n = static_cast<int64_t>(mb.tokens.size());
      mb.batch.tokens = Tensor::from_ints(mb.tokens, {n});
      mb.batch.position_ids = Tensor::from_ints(mb.positions, {n});
      mb.batch.token_index = Tensor::from_ints(mb.index, {n, 3});
      mb.batch.table = table_tensor;
      mb.batch.logit_tokens = Tensor::from_ints(mb.logit_tokens, {static_cast<int64_t>(mb.logit_tokens.size())});
    }
    return mbs;
  }

  // ---- 3b. The deciding rank: next tokens of one micro-batch's queries from its full logits.
  // Per query: [finished, reason (0 stop, 1 length), emitted token or -1, n, (parent, token) x n,
  //             span length, span..., logprob length, logprob...]; the logprob part (queries with
  //             logprobs >= 0 that emit a token) is [logprob, k, (token, logprob) x k], each
  //             logprob as the bits of an fp32.
  void decide(const MicroBatch& mb, const Tensor& logits, std::vector<int32_t>& out) {
    const int64_t V = cfg.vocab_size;
    const float* all = logits.data_as<float>();
    int64_t row = 0;
    const auto is_end = [&](int32_t t) { return t == cfg.tokens.eop || t == cfg.tokens.eos; };
    for (Query* q : mb.queries) {
      const int64_t rows = q->prefilled ? q->active : 1;
      const int64_t length_after = q->blank.context_length() + q->step + 1;
      if (q->p.strategy != Strategy::Beam) {
        const int32_t t = choose_token(all + row * V, V, q->p, cfg.tokens, q->blank_index, q->step, q->gen);
        if (is_end(t)) {
          out.insert(out.end(), {1, 0, -1, 0, static_cast<int32_t>(q->gen.size())});
          out.insert(out.end(), q->gen.begin(), q->gen.end());
          out.push_back(0);
          row += rows;
          continue;
        }
        if (length_after >= q->blank.limit) {
          out.insert(out.end(), {1, 1, t, 0, static_cast<int32_t>(q->gen.size() + 1)});
          out.insert(out.end(), q->gen.begin(), q->gen.end());
          out.push_back(t);
        } else {
          out.insert(out.end(), {0, 0, t, 1, 0, t, 0});
        }
        if (q->p.logprobs < 0) {
          out.push_back(0);
        } else {
          const TokenLogprobs lp = token_logprobs(all + row * V, V, t, q->p.logprobs);
          out.push_back(static_cast<int32_t>(2 + 2 * lp.top.size()));
          out.push_back(fp32_bits(lp.logprob));
          out.push_back(static_cast<int32_t>(lp.top.size()));
          for (const auto& [token, logprob] : lp.top) {
            out.push_back(token);
            out.push_back(fp32_bits(logprob));
          }
        }
      } else {
        std::vector<const float*> rows_logits;
        for (int64_t b = 0; b < rows; ++b) rows_logits.push_back(all + (row + b) * V);
        const BeamSearch::Step st = q->beam->step(rows_logits, V);
        if (q->beam->done() || length_after >= q->blank.limit) {
          bool stopped = false;
          const std::vector<int32_t> span = q->beam->finish(stopped);
          out.insert(out.end(), {1, stopped ? 0 : 1, -1, 0, static_cast<int32_t>(span.size())});
          out.insert(out.end(), span.begin(), span.end());
          out.push_back(0);
        } else {
          out.insert(out.end(), {0, 0, -1, static_cast<int32_t>(st.tokens.size())});
          for (size_t i = 0; i < st.tokens.size(); ++i) {
            out.push_back(st.parents[i]);
            out.push_back(st.tokens[i]);
          }
          out.insert(out.end(), {0, 0});
        }
      }
      row += rows;
    }
  }

  // ---- 3. The step through the pipeline; returns the decisions (on every rank).
  std::vector<int32_t> run_step(std::vector<MicroBatch>& mbs) {
    const int tensor = g.topo.layout().tensor;
    std::vector<int32_t> decisions;
    run_forward_only(model, g, static_cast<int>(mbs.size()),
                     [&](int j) { return static_cast<int64_t>(mbs[static_cast<size_t>(j)].tokens.size()); },
                     [&](int j, const Tensor& input) {
                       const MicroBatch& mb = mbs[static_cast<size_t>(j)];
                       Tensor out = model.forward_cached(mb.batch, input, cache);
                       // The last stage gathers the logits over the tensor-parallel group, only
                       // here, only for the tokens that predict, and decides.
                       if (model.shard().last_stage) {
                         const Tensor full = gather_vocab_logits(out, *g.tp, tensor);
                         if (deciding) decide(mb, full, decisions);
                       }
                       return out;
                     });
    broadcast_vector(*g.replica, decisions, decider, DType::I32);
    return decisions;
  }

  // ---- 4. Every rank applies the decisions in plan order.
  void apply(const std::vector<MicroBatch>& mbs, const std::vector<int32_t>& d) {
    size_t at = 0;
    for (const MicroBatch& mb : mbs)
      for (Query* q : mb.queries) {
        GLMRT_CHECK(at + 4 <= d.size(), "generation: short decision record");
        const bool finished = d[at] != 0;
        const int32_t reason = d[at + 1], emitted = d[at + 2], n = d[at + 3];
        at += 4;
        std::vector<int32_t> parents, tokens;
        for (int32_t i = 0; i < n; ++i) {
          parents.push_back(d[at++]);
          tokens.push_back(d[at++]);
        }
        const int32_t span_len = d[at++];
        const std::vector<int32_t> span(d.begin() + static_cast<std::ptrdiff_t>(at),
                                        d.begin() + static_cast<std::ptrdiff_t>(at + span_len));
        at += static_cast<size_t>(span_len);
        GLMRT_CHECK(at < d.size(), "generation: short decision record");
        const int32_t lp_len = d[at++];
        GLMRT_CHECK(lp_len >= 0 && at + static_cast<size_t>(lp_len) <= d.size(),
                    "generation: short decision record");
        std::optional<TokenLogprobs> lp;
        if (lp_len > 0) {
          lp.emplace();
          lp->token = emitted;
          lp->logprob = fp32_from_bits(d[at]);
          for (int32_t i = 0; i < d[at + 1]; ++i)
            lp->top.emplace_back(d[at + 2 + 2 * i], fp32_from_bits(d[at + 3 + 2 * i]));
          q->logprobs.push_back(*lp);
        }
        at += static_cast<size_t>(lp_len);
        if (root && emitted >= 0) {
          auto it = callbacks.find(q->id);
          if (it != callbacks.end() && it->second.on_token)
            it->second.on_token(emitted, q->blank_index, lp ? &*lp : nullptr);
        }
        q->prefilled = true;
        if (finished) {
          finish_blank(*q, span, reason == 0 ? "stop" : "length");
          advance(*q);
          continue;
        }
        ++q->step;
        if (q->p.strategy != Strategy::Beam) {
          q->gen.push_back(tokens[0]);
          q->last = tokens;
          continue;
        }
        // Beam reorder: new row i takes its parent's table up to the next position (no KV copy).
        const int64_t pos = q->blank.context_length() + q->step - 1;
        std::vector<std::vector<int32_t>> old(static_cast<size_t>(q->active));
        for (int64_t b = 0; b < q->active; ++b) {
          const int32_t* src = table.data() + q->rows[static_cast<size_t>(b)] * capacity;
          old[static_cast<size_t>(b)].assign(src, src + pos);
        }
        for (size_t i = 0; i < tokens.size(); ++i)
          std::copy(old[static_cast<size_t>(parents[i])].begin(), old[static_cast<size_t>(parents[i])].end(),
                    table.begin() + q->rows[i] * capacity);
        q->active = static_cast<int64_t>(tokens.size());
        q->last = tokens;
      }
    // Queries that ended leave, freeing their rows.
    std::vector<std::unique_ptr<Query>> still;
    for (auto& q : active) {
      if (q->finished) end_query(*q);
      else still.push_back(std::move(q));
    }
    active = std::move(still);
  }

  void run(Source& src) {
    while (exchange_control(src)) {
      if (active.empty()) continue;
      const auto start = std::chrono::steady_clock::now();
      bool prefill = false;
      for (const auto& q : active) prefill = prefill || !q->prefilled;
      const bool profiling = !prefill && profile_first > 0 && model.device().is_cuda();
      if (profiling && stats.decode_steps + 1 == profile_first) cuda_profiler_range(true);
      std::vector<MicroBatch> mbs = plan();
      int64_t tokens = 0;
      for (const MicroBatch& mb : mbs) tokens += static_cast<int64_t>(mb.tokens.size());
      const std::vector<int32_t> decisions = run_step(mbs);
      apply(mbs, decisions);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (prefill) {
        ++stats.prefill_steps;
        stats.prefill_tokens += tokens;
        stats.prefill_seconds += seconds;
      } else {
        ++stats.decode_steps;
        stats.decode_tokens += tokens;
        stats.decode_seconds += seconds;
        if (profiling && stats.decode_steps == profile_last) cuda_profiler_range(false);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
int64_t default_cache_rows(int64_t max_batch, const GenerationParams& defaults) {
  const int64_t beams = std::max<int64_t>(1, defaults.num_beams);
  return std::max(max_batch * (defaults.strategy == Strategy::Beam ? beams : 1), beams);
}

GenerationEngine::GenerationEngine(GlmModel& model, ProcessGroups& groups, EngineOptions options)
    : impl_(std::make_unique<Impl>(model, groups, options)) {}

GenerationEngine::~GenerationEngine() = default;

std::string GenerationEngine::check_request(const GenerationRequest& r, const GlmConfig& config) {
  if (r.prompt_ids.empty()) return "the prompt is empty";
  for (size_t i = 0; i < r.prompt_ids.size(); ++i)
    if (r.prompt_ids[i] < 0 || r.prompt_ids[i] >= config.vocab_size)
      return detail::concat("prompt token ", i, " is ", r.prompt_ids[i], ", outside the vocabulary [0, ",
                            config.vocab_size, ")");
  for (const auto& [token, bias] : r.params.logit_bias)
    if (token >= config.vocab_size)
      return detail::concat("logit_bias token ", token, " is outside the vocabulary [0, ",
                            config.vocab_size, ")");
  try {
    validate_params(r.params, "");
    const PreparedPrompt p = prepare_prompt(r.prompt_ids, config.tokens);
    (void)next_blank(p, config.tokens.sop, r.params.out_seq_length, config.max_sequence_length);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const EngineStats& GenerationEngine::stats() const { return impl_->stats; }
void GenerationEngine::reset_stats() { impl_->stats = {}; }

std::vector<GenerationResult> GenerationEngine::generate(
    const std::vector<GenerationRequest>& requests,
    const std::function<void(size_t, int32_t, int64_t)>& on_token) {
  ProcessGroups& g = impl_->g;
  const Layout& L = g.topo.layout();
  if (L.data == 1) return generate_here(requests, on_token);
  // Data-parallel replicas: world rank 0 (replica 0's root) sends each other replica's root its
  // share of the queries, every replica generates its share on its own, and the roots send the
  // results back. Replica roots are world ranks tensor · d.
  MpiCommunicator& world = *g.world;
  const bool world_root = g.topo.rank() == 0;
  std::vector<GenerationRequest> mine;
  std::vector<size_t> index;  // world rank 0: the query each of its own results answers
  std::vector<std::vector<size_t>> shares(static_cast<size_t>(L.data));
  if (world_root) {
    const std::vector<int> replica = assign_replicas(requests, L.data);
    for (size_t i = 0; i < requests.size(); ++i) shares[static_cast<size_t>(replica[i])].push_back(i);
    for (int d = 1; d < L.data; ++d) {
      std::vector<int64_t> msg;
      for (size_t i : shares[static_cast<size_t>(d)]) {
        put_ints(msg, requests[i].prompt_ids);
        put_params(msg, requests[i].params);
      }
      send_vector(world, msg, g.topo.rank_of({0, d, 0}));
    }
    for (size_t i : shares[0]) mine.push_back(requests[i]);
    index = shares[0];
  } else if (impl_->root) {
    const std::vector<int64_t> msg = recv_vector(world, 0);
    for (const int64_t* q = msg.data(); q < msg.data() + msg.size();) {
      GenerationRequest r;
      r.prompt_ids = get_ints(q);
      r.params = get_params(q);
      mine.push_back(std::move(r));
    }
  }
  std::function<void(size_t, int32_t, int64_t)> local_token;
  if (world_root && on_token)
    local_token = [&](size_t i, int32_t t, int64_t blank) { on_token(index[i], t, blank); };
  std::vector<GenerationResult> local = generate_here(mine, local_token);
  if (!world_root) {
    if (impl_->root) {
      std::vector<int64_t> msg;
      for (const GenerationResult& r : local) put_result(msg, r);
      send_vector(world, msg, 0);
    }
    return {};
  }
  std::vector<GenerationResult> results(requests.size());
  for (size_t j = 0; j < local.size(); ++j) results[index[j]] = std::move(local[j]);
  for (int d = 1; d < L.data; ++d) {
    // The replicas run concurrently; the shares are balanced so that they end close together:
    // a root whose results wait more than parallel.timeout_s for the other side fails by name.
    const std::vector<int64_t> msg = recv_vector(world, g.topo.rank_of({0, d, 0}));
    const int64_t* q = msg.data();
    for (size_t i : shares[static_cast<size_t>(d)]) results[i] = get_result(q);
  }
  return results;
}

std::vector<GenerationResult> GenerationEngine::generate_here(
    const std::vector<GenerationRequest>& requests,
    const std::function<void(size_t, int32_t, int64_t)>& on_token) {
  std::vector<GenerationResult> results;
  size_t next = 0;
  Impl::Source src;
  if (impl_->root) {
    results.resize(requests.size());
    src.take = [&](size_t max, bool) {
      std::vector<PendingRequest> out;
      while (next < requests.size() && out.size() < max) {
        const size_t i = next++;
        PendingRequest r;
        r.request = requests[i];
        if (on_token)
          r.on_token = [&on_token, i](int32_t t, int64_t blank, const TokenLogprobs*) { on_token(i, t, blank); };
        r.on_done = [&results, i](const GenerationResult& res) { results[i] = res; };
        out.push_back(std::move(r));
      }
      return out;
    };
    src.exhausted = [&] { return next >= requests.size(); };
  }
  impl_->run(src);
  return results;
}

std::vector<int64_t> GenerationEngine::serve(RequestQueue* queue) {
  ProcessGroups& g = impl_->g;
  const bool world_root = g.topo.rank() == 0;
  GLMRT_CHECK(!world_root || queue != nullptr, "serve: world rank 0 needs the request queue");
  Impl::Source src;
  const int64_t answered_before = impl_->stats.queries;
  if (g.topo.layout().data == 1) {
    if (world_root) {
      src.take = [queue](size_t max, bool idle) {
        return queue->take(max, std::chrono::milliseconds(idle ? 100 : 0));
      };
      src.exhausted = [queue] { return queue->closed() && queue->size() == 0; };
    }
    impl_->run(src);
    if (!world_root) return {};
    return {impl_->stats.queries - answered_before};
  }
  // Data-parallel replicas (inference/replicas.h): rank 0 routes the requests, every other
  // replica's root takes its share from rank 0 and reports back.
  int thread_level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&thread_level);
  if (thread_level < MPI_THREAD_MULTIPLE)  // every rank throws the same
    throw ConfigError(detail::concat(
        "serving ", g.topo.layout().data, " data-parallel replicas needs MPI_THREAD_MULTIPLE (world rank 0 "
        "routes requests on a thread of its own); this MPI was initialised at thread level ",
        thread_level));
  ReplicaChannel channel(g);
  if (world_root) {
    ReplicaRouter router(channel, *queue, impl_->opt.max_batch);
    src.take = [&router](size_t max, bool idle) { return router.take(max, idle); };
    src.exhausted = [&router] { return router.exhausted(); };
    impl_->run(src);
    return router.finish();
  }
  if (impl_->root) {
    ReplicaClient client(channel);
    src.take = [&client](size_t max, bool idle) { return client.take(max, idle); };
    src.exhausted = [&client] { return client.exhausted(); };
    src.pump = [&client] { client.pump(); };
    impl_->run(src);
    client.finish();
    return {};
  }
  impl_->run(src);
  return {};
}

}  // namespace glmrt
