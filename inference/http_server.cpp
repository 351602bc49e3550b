// The HTTP front end of `glmrt serve` (inference/http_server.h): cpp-httplib's server, its routes,
// queries handed to the RequestQueue and waited on, server-sent events, shutdown. The JSON of the
// requests and responses is inference/http_api.h's.
#include "inference/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "data/tokenizer.h"
#include "inference/connection_watch.h"
#include "inference/http_api.h"
#include "inference/metrics.h"
#include "kernels/error.h"

namespace glmrt {

namespace {

void set_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

// ---- A query in flight --------------------------------------------------------------------------

// Shared by a handler and the engine-thread callbacks of its query (which may outlive the handler).
struct Query {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  GenerationResult result;
  std::vector<std::vector<int32_t>> blanks;  // streamed tokens per blank (stop tokens dropped)
  std::vector<TokenLogprobs> logprobs;       // with logprobs: one per streamed token, in order
  uint64_t version = 0;                      // bumped by every token
  std::atomic<bool> cancelled{false};        // the engine drops the query at its next step
  std::atomic<const char*> cancel_reason{""};

  // Asks the engine to drop the query (`why` is logged when it has).
  void cancel(const char* why) {
    cancel_reason = why;
    cancelled = true;
  }
};

// One count of the queries the server is answering; stop() drains them.
class ActiveCount {
 public:
  void add() {
    std::lock_guard<std::mutex> lock(mu_);
    ++n_;
  }
  void remove() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --n_;
    }
    cv_.notify_all();
  }
  int64_t get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return n_;
  }
  bool wait_zero(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return n_ == 0; });
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t n_ = 0;
};

struct ActiveGuard {
  explicit ActiveGuard(ActiveCount& c) : count(c) { count.add(); }
  ~ActiveGuard() { count.remove(); }
  ActiveGuard(const ActiveGuard&) = delete;
  ActiveGuard& operator=(const ActiveGuard&) = delete;
  ActiveCount& count;
};

// cpp-httplib's server with its listening socket reachable (to raise the listen backlog, which
// the library fixes at 5: 100 clients connecting at once would wait for SYN retransmits).
class Server : public httplib::Server {
 public:
  int listening_socket() const { return svr_sock_; }
};

}  // namespace

// ---- The server ---------------------------------------------------------------------------------

struct HttpServer::Impl {
  HttpServerOptions options;
  RequestQueue& queue;
  const Tokenizer* tokenizer;
  GlmConfig config;
  HttpApi api;  // the JSON of requests and responses

  Server svr;
  std::thread listener;
  int bound_port = -1;
  bool started = false, stopped = false;
  std::atomic<bool> stopping{false};
  ActiveCount active;
  // Shared with the queries' callbacks, which may run after the server is gone.
  std::shared_ptr<ServerMetrics> metrics = std::make_shared<ServerMetrics>();

  Impl(HttpServerOptions o, RequestQueue& q, const Tokenizer* t, const GlmConfig& c,
       const GenerationParams& d)
      : options(std::move(o)), queue(q), tokenizer(t), config(c),
        api(t, c, d, options.max_body_bytes, options.max_prompt_tokens, options.model_name) {
    if (options.threads < 1) options.threads = 1;
  }

  void routes();
  void health(httplib::Response& res);
  void generate(const httplib::Request& req, httplib::Response& res);
  void completions(const httplib::Request& req, httplib::Response& res);
  void models(httplib::Response& res);

  std::shared_ptr<Query> submit(GenerationRequest r, bool stream);
  // Waits for the query's result (its error: an HttpError). `client`: the request's connection;
  // when its client has gone away the query is cancelled and an HttpError (499) thrown.
  const GenerationResult& wait(Query& q, ConnectionWatch& client);
  // A completion's text, ended at its first stop sequence when there is one (the tokens are
  // watched as they come, and the engine drops the query once a stop appears).
  struct StoppedText {
    std::string text, finish_reason;
    int64_t generated_tokens = 0;
    bool cut = false;                          // a stop sequence ended `text` early
    std::vector<std::vector<int32_t>> blanks;  // the generated tokens behind `text`, per blank
    std::vector<TokenLogprobs> logprobs;       // with logprobs: one per token of `blanks`
  };
  StoppedText wait_text(Query& q, const StopSequences& stop, ConnectionWatch& client);
  std::string spans_text(const std::vector<std::vector<int32_t>>& spans) const {
    std::string s;
    for (const auto& span : spans) s += tokenizer->decode(span);
    return s;
  }
};

// When the request this worker thread serves was routed (ServerMetrics' durations).
std::chrono::steady_clock::time_point& request_start() {
  thread_local std::chrono::steady_clock::time_point start{};
  return start;
}

// Runs a handler body: HttpErrors and exceptions become JSON errors; the server keeps serving.
template <class F>
void guarded(httplib::Response& res, F&& body) {
  try {
    body();
  } catch (const HttpError& e) {
    set_error(res, e);
  } catch (const InputError& e) {
    set_error(res, {400, e.what(), "invalid_request"});
  } catch (const std::exception& e) {
    set_error(res, {500, std::string("internal error: ") + e.what(), "internal_error"});
  } catch (...) {
    set_error(res, {500, "internal error", "internal_error"});
  }
}

void HttpServer::Impl::routes() {
  using httplib::Request;
  using httplib::Response;
  svr.Get("/health", [this](const Request&, Response& res) { guarded(res, [&] { health(res); }); });
  svr.Get("/v1/models", [this](const Request&, Response& res) { guarded(res, [&] { models(res); }); });
  svr.Get("/metrics", [this](const Request&, Response& res) {
    guarded(res, [&] {
      res.set_content(metrics->render(static_cast<int64_t>(queue.size()), active.get()),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
  });
  svr.Post("/generate", [this](const Request& req, Response& res) {
    guarded(res, [&] { generate(req, res); });
  });
  svr.Post("/v1/completions", [this](const Request& req, Response& res) {
    guarded(res, [&] { completions(req, res); });
  });

  // Every other method on a known path: 405 with Allow.
  const auto not_allowed = [](const char* allow) {
    return [allow](const Request& req, Response& res) {
      res.set_header("Allow", allow);
      set_error(res, {405, req.method + " " + req.path + " is not allowed; use " + allow,
                      "method_not_allowed"});
    };
  };
  for (const char* path : {"/health", "/v1/models", "/metrics"}) {
    svr.Post(path, not_allowed("GET"));
    svr.Put(path, not_allowed("GET"));
    svr.Patch(path, not_allowed("GET"));
    svr.Delete(path, not_allowed("GET"));
    svr.Options(path, not_allowed("GET"));
  }
  for (const char* path : {"/generate", "/v1/completions"}) {
    svr.Get(path, not_allowed("POST"));
    svr.Put(path, not_allowed("POST"));
    svr.Patch(path, not_allowed("POST"));
    svr.Delete(path, not_allowed("POST"));
    svr.Options(path, not_allowed("POST"));
  }

  // Responses the library makes itself (404, 413, 400 for a malformed request) get a JSON body.
  const size_t max_body = options.max_body_bytes;
  httplib::Server::HandlerWithResponse on_error = [max_body](const Request& req, Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
    std::string message, code;
    switch (res.status) {
      case 404: message = "no such endpoint: " + req.method + " " + req.path +
                          " (endpoints: GET /health, POST /generate, POST /v1/completions, GET /v1/models, "
                          "GET /metrics)";
                code = "not_found"; break;
      case 413: message = "the request body is over the limit of " + std::to_string(max_body) +
                          " bytes (form-encoded bodies: 8192; send Content-Type: application/json)";
                code = "body_too_large"; break;
      case 400: message = "malformed HTTP request (a POST needs a body with Content-Length)";
                code = "bad_request"; break;
      default: message = "HTTP error " + std::to_string(res.status);
               code = "http_" + std::to_string(res.status);
    }
    res.set_content(error_body(res.status, message, code), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  };
  svr.set_error_handler(std::move(on_error));
  svr.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    set_error(res, {500, "internal error: " + what, "internal_error"});
  });
  // Every response is counted (ServerMetrics), timed from its request's routing (on the worker
  // thread that serves it) to the logger call after its last byte. Responses the library gives
  // before routing (a malformed request, a body over the limit) count with a time of 0.
  svr.set_pre_routing_handler([](const Request&, Response&) {
    request_start() = std::chrono::steady_clock::now();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.set_logger([metrics = metrics](const Request& req, const Response& res) {
    auto& start = request_start();
    const double seconds = start == std::chrono::steady_clock::time_point{}
                               ? 0.0
                               : std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    start = {};
    metrics->request(req.path, res.status, seconds);
  });
  // A client that announces a large body (Expect: 100-continue) is refused before sending it.
  svr.set_expect_100_continue_handler([max_body](const Request& req, Response& res) {
    const uint64_t length = req.get_header_value<uint64_t>("Content-Length");
    if (length > max_body) {
      set_error(res, {413, "the request body has " + std::to_string(length) +
                               " bytes, over the limit of " + std::to_string(max_body) + " bytes",
                      "body_too_large"});
      return 413;
    }
    return 100;
  });
}

void HttpServer::Impl::health(httplib::Response& res) {
  res.set_content(health_response(queue.size(), active.get()), "application/json");
}

void HttpServer::Impl::models(httplib::Response& res) {
  res.set_content(api.models_response(), "application/json");
}

std::shared_ptr<Query> HttpServer::Impl::submit(GenerationRequest r, bool stream) {
  auto q = std::make_shared<Query>();
  PendingRequest p;
  p.request = std::move(r);
  if (stream) {
    const int32_t eop = config.tokens.eop, eos = config.tokens.eos;
    p.on_token = [q, eop, eos](int32_t token, int64_t blank, const TokenLogprobs* lp) {
      if (token == eop || token == eos || blank < 0) return;  // stop tokens are not in the span
      {
        std::lock_guard<std::mutex> lock(q->mu);
        if (q->blanks.size() <= static_cast<size_t>(blank)) q->blanks.resize(blank + 1);
        q->blanks[blank].push_back(token);
        if (lp) q->logprobs.push_back(*lp);
        ++q->version;
      }
      q->cv.notify_all();
    };
  }
  p.cancelled = [q] { return q->cancelled.load(); };
  p.on_done = [q, metrics = metrics](const GenerationResult& result) {
    metrics->query_ended(result);
    if (result.error == kCancelled)
      std::fprintf(stderr, "glmrt serve: %s; the engine dropped its query\n", q->cancel_reason.load());
    {
      std::lock_guard<std::mutex> lock(q->mu);
      q->result = result;
      q->done = true;
    }
    q->cv.notify_all();
  };
  const auto prompt_tokens = static_cast<int64_t>(p.request.prompt_ids.size());
  if (!queue.push(std::move(p)))
    throw HttpError{503, "the server is shutting down (the request queue is closed)", "unavailable"};
  metrics->query_submitted(prompt_tokens);
  return q;
}

namespace {

ConnectionWatch watch(const httplib::Request& req) {
  return ConnectionWatch(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
}

// A client that went away before its answer: the query is dropped (the 499 reaches nobody).
[[noreturn]] void client_gone(Query& q) {
  q.cancel("a client went away before its answer");
  throw HttpError{499, "the client closed the connection", "client_closed_request"};
}

}  // namespace

const GenerationResult& HttpServer::Impl::wait(Query& q, ConnectionWatch& client) {
  std::unique_lock<std::mutex> lock(q.mu);
  while (!q.cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return q.done; })) {
    if (stopping.load())
      throw HttpError{503, "the server stopped before the query was answered", "unavailable"};
    lock.unlock();
    if (client.gone()) client_gone(q);
    lock.lock();
  }
  if (!q.result.error.empty())
    throw HttpError{400, "generation failed: " + q.result.error, "generation_failed"};
  return q.result;
}

HttpServer::Impl::StoppedText HttpServer::Impl::wait_text(Query& q, const StopSequences& stop,
                                                          ConnectionWatch& client) {
  if (stop.empty()) {
    const GenerationResult& result = wait(q, client);
    return {spans_text(result.spans), finish_reason(result), result.generated_tokens, false,
            result.spans, result.logprobs};
  }
  uint64_t seen = 0;
  for (;;) {
    std::vector<std::vector<int32_t>> blanks;
    std::vector<TokenLogprobs> logprobs;
    {
      std::unique_lock<std::mutex> lock(q.mu);
      q.cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return q.done || q.version != seen; });
      if (q.done) break;
      if (q.version == seen) {
        if (stopping.load())
          throw HttpError{503, "the server stopped before the query was answered", "unavailable"};
        lock.unlock();
        if (client.gone()) client_gone(q);
        continue;
      }
      seen = q.version;
      blanks = q.blanks;
      logprobs = q.logprobs;
    }
    const std::string text = spans_text(blanks);
    if (const size_t at = stop.find(text); at != std::string::npos) {
      q.cancel("a stop sequence was generated");
      int64_t tokens = 0;
      for (const auto& b : blanks) tokens += static_cast<int64_t>(b.size());
      return {text.substr(0, at), "stop", tokens, true, std::move(blanks), std::move(logprobs)};
    }
  }
  const GenerationResult& result = wait(q, client);  // done: its result, or its error as an HttpError
  const std::string text = spans_text(result.spans);
  if (const size_t at = stop.find(text); at != std::string::npos)
    return {text.substr(0, at), "stop", result.generated_tokens, true, result.spans, result.logprobs};
  return {text, finish_reason(result), result.generated_tokens, false, result.spans, result.logprobs};
}

// ---- POST /generate -----------------------------------------------------------------------------

void HttpServer::Impl::generate(const httplib::Request& req, httplib::Response& res) {
  ActiveGuard counted(active);
  GenerationRequest r = api.parse_generate(req.body);
  auto q = submit(std::move(r), false);
  ConnectionWatch client = watch(req);
  const GenerationResult& result = wait(*q, client);
  res.set_content(api.generate_response(result), "application/json");
}

// ---- POST /v1/completions -----------------------------------------------------------------------

namespace {

// The logprobs entries of a completion's tokens (`blanks`, with `logprobs` one per token in order),
// the first at character `offset`, up to the tokens that start within the first `length`
// characters of the generated text (a stop sequence may have cut it).
CompletionLogprobs completion_logprobs(const Tokenizer& tok, const std::vector<std::vector<int32_t>>& blanks,
                                       const std::vector<TokenLogprobs>& logprobs, size_t offset,
                                       size_t length) {
  CompletionLogprobs out;
  out.text_offset = offset;
  size_t k = 0, at = 0;
  for (const auto& blank : blanks)
    for (size_t i = 0; i < blank.size() && k < logprobs.size(); ++i, ++k) {
      if (at >= length) return out;
      out.entries.push_back(logprob_entry(tok, {blank.begin(), blank.begin() + static_cast<std::ptrdiff_t>(i)},
                                          logprobs[k]));
      at += utf8_length(out.entries.back().text);
    }
  return out;
}

// The n candidates with the highest mean log-probability per token (a candidate without tokens
// ranks last), best first, ties in candidate order; their logprobs kept only when `show`.
std::vector<CompletionChoice> best_choices(std::vector<CompletionChoice> candidates, int n, bool show) {
  const auto mean = [](const CompletionChoice& c) {
    const auto& e = c.logprobs->entries;
    if (e.empty()) return -std::numeric_limits<double>::infinity();
    double sum = 0;
    for (const LogprobEntry& x : e) sum += x.logprob;
    return sum / static_cast<double>(e.size());
  };
  std::vector<size_t> order(candidates.size());
  std::vector<double> means(candidates.size());
  for (size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
    means[i] = mean(candidates[i]);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return means[a] > means[b]; });
  std::vector<CompletionChoice> best;
  for (int i = 0; i < n; ++i) {
    best.push_back(std::move(candidates[order[static_cast<size_t>(i)]]));
    if (!show) best.back().logprobs.reset();
  }
  return best;
}

// One choice of a streamed completion: turns its query's tokens into chunks (text_completion
// JSON for choice `index`): one per generated token that adds text (the blank's tokens are
// decoded whole and the new suffix is sent, holding back an incomplete UTF-8 tail and a tail that
// could still become a stop sequence), then a last chunk with the rest and finish_reason.
class ChoiceStream {
 public:
  ChoiceStream(std::shared_ptr<Query> q, const Tokenizer& tok, CompletionMeta meta, int index,
               std::string echo, StopSequences stop, bool logprobs)
      : q_(std::move(q)), tok_(tok), meta_(std::move(meta)), index_(index), pending_echo_(echo),
        echo_prefix_(echo), stop_(std::move(stop)), prefix_(std::move(echo)), logprobs_(logprobs) {
    pending_lp_.text_offset = utf8_length(echo_prefix_);
  }

  enum class Poll { idle, news, ended };
  // Appends this choice's new chunks to `out`, waiting up to `wait` for news. `ended`: its last
  // chunk is out (or `error` holds the message of a failed generation, and nothing was added).
  Poll poll(std::vector<std::string>& out, std::chrono::milliseconds wait, std::string& error) {
    if (ended_) return Poll::ended;
    const size_t before = out.size();
    if (!pending_echo_.empty()) {
      emitted_ = std::move(pending_echo_);
      pending_echo_.clear();
      out.push_back(completion_chunk(meta_, index_, emitted_, std::nullopt));
    }
    std::vector<std::vector<int32_t>> blanks;
    std::vector<TokenLogprobs> lps;
    bool done;
    GenerationResult result;
    {
      std::unique_lock<std::mutex> lock(q_->mu);
      q_->cv.wait_for(lock, wait, [&] { return q_->done || q_->version != seen_version_; });
      if (!q_->done && q_->version == seen_version_) return out.size() > before ? Poll::news : Poll::idle;
      seen_version_ = q_->version;
      blanks = q_->blanks;
      if (logprobs_) lps = q_->logprobs;
      done = q_->done;
      if (done) result = q_->result;
    }
    // One chunk per new token, in order; a stop sequence ends the completion before it.
    for (; blank_ < blanks.size(); ++blank_, token_ = 0) {
      const auto& tokens = blanks[blank_];
      for (; token_ < tokens.size(); ++token_) {
        const std::string text = tok_.decode({tokens.begin(), tokens.begin() + token_ + 1});
        std::string stable = prefix_ + text.substr(0, utf8_stable_prefix(text));
        if (logprobs_ && static_cast<size_t>(tokens_seen_) < lps.size())
          pending_lp_.entries.push_back(logprob_entry(
              tok_, {tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(token_)},
              lps[static_cast<size_t>(tokens_seen_)]));
        ++tokens_seen_;
        if (!stop_.empty()) {
          const std::string generated = stable.substr(echo_prefix_.size());
          const size_t at = stop_.find(generated);
          if (at != std::string::npos) return end_at_stop(out, echo_prefix_ + generated.substr(0, at));
          stable.resize(echo_prefix_.size() + stop_.sendable(generated));
        }
        if (stable.size() > emitted_.size() && stable.compare(0, emitted_.size(), emitted_) == 0) {
          const std::string delta = stable.substr(emitted_.size());
          emitted_ = stable;
          out.push_back(completion_chunk(meta_, index_, delta, std::nullopt, take_logprobs()));
        }
      }
      if (blank_ + 1 < blanks.size()) prefix_ += tok_.decode(tokens);  // this blank is complete
      else break;
    }
    if (!done) return Poll::news;

    ended_ = true;
    if (!result.error.empty()) {
      error = "generation failed: " + result.error;
      return Poll::ended;
    }
    tokens_seen_ = result.generated_tokens;
    std::string text = echo_prefix_;
    for (const auto& span : result.spans) text += tok_.decode(span);
    if (const size_t at = stop_.find(text.substr(echo_prefix_.size())); at != std::string::npos)
      return end_at_stop(out, text.substr(0, echo_prefix_.size() + at));
    // The rest of the text (the held-back tail; everything for beam search, which streams nothing).
    const std::string rest = text.compare(0, emitted_.size(), emitted_) == 0 && text.size() >= emitted_.size()
                                 ? text.substr(emitted_.size())
                                 : std::string();
    out.push_back(completion_chunk(meta_, index_, rest, finish_reason(result), take_logprobs()));
    return Poll::ended;
  }

  bool ended() const { return ended_; }
  int64_t completion_tokens() const { return tokens_seen_; }
  Query& query() { return *q_; }

 private:
  // A stop sequence was generated: the text before it, finish_reason "stop", and the engine
  // drops the query (its tokens past the stop are not wanted).
  Poll end_at_stop(std::vector<std::string>& out, const std::string& text) {
    q_->cancel("a stop sequence was generated");
    ended_ = true;
    const std::string rest = text.size() > emitted_.size() && text.compare(0, emitted_.size(), emitted_) == 0
                                 ? text.substr(emitted_.size())
                                 : std::string();
    out.push_back(completion_chunk(meta_, index_, rest, std::string("stop"), take_logprobs()));
    return Poll::ended;
  }

  // With logprobs: the entries of the tokens since the last chunk, for the chunk being sent.
  const CompletionLogprobs* take_logprobs() {
    if (!logprobs_) return nullptr;
    sent_lp_ = std::move(pending_lp_);
    pending_lp_ = {};
    pending_lp_.text_offset = sent_lp_.text_offset;
    for (const LogprobEntry& e : sent_lp_.entries) pending_lp_.text_offset += utf8_length(e.text);
    return &sent_lp_;
  }

  std::shared_ptr<Query> q_;
  const Tokenizer& tok_;
  CompletionMeta meta_;
  int index_;
  std::string pending_echo_, echo_prefix_;
  StopSequences stop_;
  bool ended_ = false;
  int64_t tokens_seen_ = 0;       // generated tokens turned into text so far
  uint64_t seen_version_ = 0;
  size_t blank_ = 0, token_ = 0;  // the next token to turn into a chunk
  std::string prefix_;            // echo + the text of the completed blanks
  bool logprobs_;
  CompletionLogprobs pending_lp_, sent_lp_;  // entries not sent yet / of the chunk being sent
  std::string emitted_;           // everything sent so far
};

// A streamed completion as server-sent events: the chunks of its choices as they come
// (interleaved when n > 1), then the usage chunk when asked for, then `data: [DONE]`.
class EventStream {
 public:
  EventStream(std::vector<ChoiceStream> choices, CompletionMeta meta, int64_t prompt_tokens,
              bool include_usage, const std::atomic<bool>& stopping)
      : choices_(std::move(choices)), meta_(std::move(meta)), prompt_tokens_(prompt_tokens),
        include_usage_(include_usage), stopping_(stopping) {}

  // cpp-httplib's chunked content provider: called until sink.done(); waits up to 100 ms for news.
  bool pump(httplib::DataSink& sink) {
    try {
      return pump_unguarded(sink);
    } catch (const std::exception& e) {
      write(sink, error_body(500, std::string("internal error: ") + e.what(), "internal_error"));
      finish(sink);
      return true;
    }
  }

  // Cancels every choice that has not ended (the client went away, or another choice failed).
  void cancel(const char* why) {
    for (ChoiceStream& c : choices_) {
      Query& q = c.query();
      bool ended;
      {
        std::lock_guard<std::mutex> lock(q.mu);
        ended = q.done;
      }
      if (!ended && !q.cancelled) q.cancel(why);
    }
  }

 private:
  bool pump_unguarded(httplib::DataSink& sink) {
    std::vector<std::string> chunks;
    bool news = false;
    // Each choice without waiting; when none had news, wait on the first that is still running.
    for (int pass = 0; pass < 2 && !news; ++pass) {
      for (ChoiceStream& c : choices_) {
        if (c.ended()) continue;
        std::string error;
        const auto wait = std::chrono::milliseconds(pass == 0 ? 0 : 100);
        const ChoiceStream::Poll r = c.poll(chunks, wait, error);
        if (!error.empty()) {
          for (const std::string& chunk : chunks)
            if (!write(sink, chunk)) return false;
          cancel("another choice of the same request failed");
          write(sink, error_body(400, error, "generation_failed"));
          finish(sink);
          return true;
        }
        news = news || r != ChoiceStream::Poll::idle;
        if (pass == 1) break;
      }
    }
    for (const std::string& chunk : chunks)
      if (!write(sink, chunk)) return false;
    if (std::all_of(choices_.begin(), choices_.end(), [](const ChoiceStream& c) { return c.ended(); })) {
      if (include_usage_) {
        int64_t tokens = 0;
        for (const ChoiceStream& c : choices_) tokens += c.completion_tokens();
        if (!write(sink, usage_chunk(meta_, prompt_tokens_, tokens))) return false;
      }
      finish(sink);
      return true;
    }
    if (!news && stopping_.load()) {
      write(sink, error_body(503, "the server stopped before the query was answered", "unavailable"));
      finish(sink);
      return true;
    }
    return news || sink.is_writable();
  }

  bool write(httplib::DataSink& sink, const std::string& data) {
    const std::string event = "data: " + data + "\n\n";
    return sink.write(event.data(), event.size());
  }
  void finish(httplib::DataSink& sink) {
    static const std::string done = "data: [DONE]\n\n";
    sink.write(done.data(), done.size());
    sink.done();
  }

  std::vector<ChoiceStream> choices_;
  CompletionMeta meta_;
  int64_t prompt_tokens_;
  bool include_usage_;
  const std::atomic<bool>& stopping_;
};

}  // namespace

void HttpServer::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  auto counted = std::make_shared<ActiveGuard>(active);
  CompletionQuery c = api.parse_completion(req.body);
  const int64_t prompt_tokens = static_cast<int64_t>(c.request.prompt_ids.size());
  const CompletionMeta meta{completion_id(), static_cast<int64_t>(std::time(nullptr)), c.model};
  // One query per candidate (best_of of them, n without best_of); sampled candidates draw from
  // seeds seed, seed + 1, ... (greedy ones are the same answer each time, as OpenAI's).
  std::vector<std::shared_ptr<Query>> queries;
  for (int i = 0; i < c.best_of; ++i) {
    GenerationRequest r = c.request;
    r.params.seed += static_cast<uint64_t>(i);
    try {
      queries.push_back(submit(std::move(r), c.stream || !c.stop.empty()));
    } catch (...) {
      for (auto& q : queries) q->cancel("another choice of the same request was refused");
      throw;
    }
  }

  if (!c.stream) {
    std::vector<CompletionChoice> choices;
    int64_t tokens = 0;
    ConnectionWatch client = watch(req);
    try {
      for (auto& q : queries) {
        const StoppedText answer = wait_text(*q, c.stop, client);
        choices.push_back({c.echo_text + answer.text, answer.finish_reason, std::nullopt});
        if (c.request.params.logprobs >= 0) {
          // Tokens past a stop sequence's cut are left out; otherwise every token is listed.
          choices.back().logprobs = completion_logprobs(
              *tokenizer, answer.blanks, answer.logprobs, utf8_length(c.echo_text),
              answer.cut ? utf8_length(answer.text) : std::numeric_limits<size_t>::max());
        }
        tokens += answer.generated_tokens;
      }
    } catch (...) {
      for (auto& q : queries)
        if (!q->cancelled) q->cancel("another choice of the same request failed");
      throw;
    }
    if (c.best_of > c.n) choices = best_choices(std::move(choices), c.n, c.show_logprobs);
    res.set_content(completion_response(meta, choices, prompt_tokens, tokens), "application/json");
    return;
  }
  std::vector<ChoiceStream> streams;
  for (int i = 0; i < c.n; ++i)
    streams.emplace_back(queries[static_cast<size_t>(i)], *tokenizer, meta, i, c.echo_text, c.stop,
                         c.request.params.logprobs >= 0);
  auto events = std::make_shared<EventStream>(std::move(streams), meta, prompt_tokens,
                                              c.include_usage, stopping);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [events](size_t, httplib::DataSink& sink) { return events->pump(sink); },
      // The response is gone (every event written, or the client went away): the request counts
      // as active until then, and a choice that has not ended is cancelled, freeing its engine
      // rows. (cpp-httplib 0.11 always passes false here, so `done` tells the two apart.)
      [counted, events](bool) { events->cancel("a streaming client went away"); });
}

// ---- Lifecycle ----------------------------------------------------------------------------------

HttpServer::HttpServer(HttpServerOptions options, RequestQueue& queue, const Tokenizer* tokenizer,
                       const GlmConfig& config, const GenerationParams& defaults)
    : impl_(std::make_unique<Impl>(std::move(options), queue, tokenizer, config, defaults)) {}

HttpServer::~HttpServer() { stop(std::chrono::milliseconds(2000)); }

int HttpServer::start() {
  Impl& s = *impl_;
  if (s.started) return s.bound_port;
  const size_t threads = static_cast<size_t>(s.options.threads);
  s.svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.svr.set_payload_max_length(s.options.max_body_bytes);
  // SO_REUSEADDR only (the library's default adds SO_REUSEPORT, which would let a second server
  // bind the same port silently).
  s.svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  s.routes();
  const std::string where = s.options.host + ":" + std::to_string(s.options.port);
  if (s.options.port == 0) {
    s.bound_port = s.svr.bind_to_any_port(s.options.host);
  } else if (s.options.port > 0 && s.options.port < 65536) {
    s.bound_port = s.svr.bind_to_port(s.options.host, s.options.port) ? s.options.port : -1;
  }
  if (s.bound_port <= 0)
    throw ConfigError("cannot listen on " + where +
                      " (address in use, not an address of this machine, or a bad port)");
  ::listen(s.svr.listening_socket(), 1024);  // the library listens with a backlog of 5
  s.listener = std::thread([&s] { s.svr.listen_after_bind(); });
  s.started = true;
  // stop() must not run before the accept loop is up (it would not see it running).
  for (int i = 0; i < 5000 && !s.svr.is_running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return s.bound_port;
}

void HttpServer::stop(std::chrono::milliseconds drain) {
  Impl& s = *impl_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  s.active.wait_zero(drain);
  s.stopping.store(true);
  s.active.wait_zero(std::chrono::milliseconds(1000));  // handlers see `stopping` within 100 ms
  s.svr.stop();
  if (s.listener.joinable()) s.listener.join();
}

int HttpServer::port() const { return impl_->bound_port; }

}  // namespace glmrt
