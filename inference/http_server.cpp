// The HTTP front end of `glmrt serve` (inference/http_server.h).
#include "inference/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "data/tokenizer.h"
#include "inference/engine.h"
#include "kernels/error.h"

namespace glmrt {

using json = nlohmann::ordered_json;  // keys in the order written

// ---- Exposed pieces ---------------------------------------------------------------------------

int64_t prepared_context_length(const std::vector<int32_t>& prompt_ids, const TokenIds& tokens) {
  const auto is_mask = [&](int32_t id) {
    return id == tokens.mask || id == tokens.gmask || id == tokens.smask;
  };
  int64_t n = static_cast<int64_t>(prompt_ids.size());
  if (std::none_of(prompt_ids.begin(), prompt_ids.end(), is_mask)) n += 1;  // [gMASK] appended
  else if (!is_mask(prompt_ids.back())) n += 1;                            // eos appended
  return n + 1;                                                            // sop
}

int64_t completion_out_seq_length(const std::vector<int32_t>& prompt_ids, int64_t max_tokens,
                                  const GlmConfig& config) {
  return std::min(prepared_context_length(prompt_ids, config.tokens) + max_tokens,
                  config.max_sequence_length);
}

size_t utf8_stable_prefix(const std::string& text) {
  size_t n = text.size();
  // An incomplete sequence at the end: a lead byte followed by fewer continuation bytes than it
  // announces.
  size_t i = n, continuation = 0;
  while (i > 0 && continuation < 3 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++continuation;
  }
  if (i > 0) {
    const unsigned char lead = static_cast<unsigned char>(text[i - 1]);
    const size_t need = (lead & 0xE0) == 0xC0 ? 2 : (lead & 0xF0) == 0xE0 ? 3 : (lead & 0xF8) == 0xF0 ? 4 : 1;
    if (need > 1 && continuation + 1 < need) n = i - 1;
  }
  static const std::string replacement = "\xEF\xBF\xBD";
  while (n >= 3 && text.compare(n - 3, 3, replacement) == 0) n -= 3;
  return n;
}

namespace {

// ---- Errors -------------------------------------------------------------------------------------

// Thrown inside a handler; becomes an OpenAI-shaped JSON error response.
struct HttpError {
  HttpError(int s, std::string m, std::string c, std::string p = "")
      : status(s), message(std::move(m)), code(std::move(c)), param(std::move(p)) {}
  int status;
  std::string message, code, param;  // param: the request field at fault, if any
};

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json error_json(int status, const std::string& message, const std::string& code,
                const std::string& param = "") {
  const char* type = status >= 500 ? "server_error"
                     : status == 404 ? "not_found_error"
                     : status == 405 ? "method_not_allowed"
                     : status == 413 ? "request_too_large"
                                     : "invalid_request_error";
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code}}}};
}

void set_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  res.set_content(dump(error_json(e.status, e.message, e.code, e.param)), "application/json");
}

// ---- Request fields -----------------------------------------------------------------------------

// The fields of one JSON request object: typed, range-checked getters that name the field, and
// the check that no unknown field was sent. null counts as absent (OpenAI clients send it).
class Fields {
 public:
  explicit Fields(const json& body) : body_(body) {}

  const json* get(const std::string& name) {
    known_.insert(name);
    const auto it = body_.find(name);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }
  void allow(const std::string& name) { known_.insert(name); }

  std::optional<int64_t> integer(const std::string& name, int64_t lo,
                                 int64_t hi = std::numeric_limits<int64_t>::max()) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    const std::string range = hi == std::numeric_limits<int64_t>::max()
                                  ? ">= " + std::to_string(lo)
                                  : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    if (!v->is_number_integer())
      throw HttpError{400, "\"" + name + "\" must be an integer " + range + ", got " + dump(*v),
                      "invalid_type", name};
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      throw HttpError{400, "\"" + name + "\" must be an integer " + range + ", got " + dump(*v),
                      "invalid_value", name};
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi)
      throw HttpError{400, "\"" + name + "\" must be an integer " + range + ", got " + dump(*v),
                      "invalid_value", name};
    return x;
  }
  std::optional<uint64_t> unsigned_integer(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number_integer() || (!v->is_number_unsigned() && v->get<int64_t>() < 0))
      throw HttpError{400, "\"" + name + "\" must be a non-negative integer, got " + dump(*v),
                      v->is_number_integer() ? "invalid_value" : "invalid_type", name};
    return v->get<uint64_t>();
  }
  // A finite number in [lo, hi] (or (lo, hi] when lo_open).
  std::optional<double> number(const std::string& name, double lo, double hi, bool lo_open = false) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    const std::string range = (lo_open ? "in (" : "in [") + num(lo) + ", " + num(hi) + "]";
    if (!v->is_number())
      throw HttpError{400, "\"" + name + "\" must be a number " + range + ", got " + dump(*v),
                      "invalid_type", name};
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
      throw HttpError{400, "\"" + name + "\" must be a number " + range + ", got " + dump(*v),
                      "invalid_value", name};
    return x;
  }
  std::optional<bool> boolean(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_boolean())
      throw HttpError{400, "\"" + name + "\" must be true or false, got " + dump(*v), "invalid_type", name};
    return v->get<bool>();
  }
  std::optional<std::string> string(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_string())
      throw HttpError{400, "\"" + name + "\" must be a string, got " + dump(*v), "invalid_type", name};
    return v->get<std::string>();
  }
  // An OpenAI option glmrt does not implement: accepted only when absent or equal to its no-op.
  void unsupported(const std::string& name, const std::function<bool(const json&)>& is_noop,
                   const std::string& why) {
    const json* v = get(name);
    if (v && !is_noop(*v))
      throw HttpError{400, "\"" + name + "\" is not supported by this server: " + why,
                      "unsupported_parameter", name};
  }

  void reject_unknown() const {
    std::string unknown;
    for (const auto& [key, value] : body_.items()) {
      if (known_.count(key)) continue;
      unknown += (unknown.empty() ? "\"" : ", \"") + key + "\"";
    }
    if (!unknown.empty()) {
      std::string known;
      for (const auto& k : known_) known += (known.empty() ? "" : ", ") + k;
      throw HttpError{400, "unknown field(s) " + unknown + " (known: " + known + ")", "unknown_field",
                      ""};
    }
  }

 private:
  static std::string num(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    return buf;
  }
  const json& body_;
  std::set<std::string> known_;
};

json parse_body(const httplib::Request& req, size_t max_bytes) {
  if (req.body.size() > max_bytes)
    throw HttpError{413, "the request body has " + std::to_string(req.body.size()) +
                             " bytes, over the limit of " + std::to_string(max_bytes) + " bytes",
                    "body_too_large"};
  json j;
  try {
    j = json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw HttpError{400, std::string("the body is not valid JSON: ") + e.what(), "invalid_json"};
  }
  if (!j.is_object())
    throw HttpError{400, "the body must be a JSON object, got " + std::string(j.type_name()),
                    "invalid_json"};
  return j;
}

// ---- A query in flight --------------------------------------------------------------------------

// Shared by a handler and the engine-thread callbacks of its query (which may outlive the handler).
struct Query {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  GenerationResult result;
  std::vector<std::vector<int32_t>> blanks;  // streamed tokens per blank (stop tokens dropped)
  uint64_t version = 0;                      // bumped by every token
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

std::string completion_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  char buf[40];
  std::snprintf(buf, sizeof buf, "cmpl-%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffu));
  return buf;
}

}  // namespace

// ---- The server ---------------------------------------------------------------------------------

struct HttpServer::Impl {
  HttpServerOptions options;
  RequestQueue& queue;
  const Tokenizer* tokenizer;
  GlmConfig config;
  GenerationParams defaults;

  Server svr;
  std::thread listener;
  int bound_port = -1;
  bool started = false, stopped = false;
  std::atomic<bool> stopping{false};
  ActiveCount active;

  Impl(HttpServerOptions o, RequestQueue& q, const Tokenizer* t, const GlmConfig& c,
       const GenerationParams& d)
      : options(std::move(o)), queue(q), tokenizer(t), config(c), defaults(d) {
    if (options.max_prompt_tokens <= 0) options.max_prompt_tokens = config.max_sequence_length;
    if (options.threads < 1) options.threads = 1;
  }

  void routes();
  void health(httplib::Response& res);
  void generate(const httplib::Request& req, httplib::Response& res);
  void completions(const httplib::Request& req, httplib::Response& res);
  void models(httplib::Response& res);

  std::vector<int32_t> prompt_ids_from(const json& v, const std::string& field) const;
  std::vector<int32_t> encode(const std::string& text, const std::string& field) const;
  void check_prompt(const std::vector<int32_t>& ids, const std::string& field) const;
  void check_query(const GenerationRequest& r) const;
  std::shared_ptr<Query> submit(GenerationRequest r, bool stream);
  const GenerationResult& wait(Query& q);
  std::string decode(const std::vector<int32_t>& ids) const { return tokenizer->decode(ids); }
  std::string spans_text(const std::vector<std::vector<int32_t>>& spans) const {
    std::string s;
    for (const auto& span : spans) s += decode(span);
    return s;
  }
};

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
  for (const char* path : {"/health", "/v1/models"}) {
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
                          " (endpoints: GET /health, POST /generate, POST /v1/completions, GET /v1/models)";
                code = "not_found"; break;
      case 413: message = "the request body is over the limit of " + std::to_string(max_body) +
                          " bytes (form-encoded bodies: 8192; send Content-Type: application/json)";
                code = "body_too_large"; break;
      case 400: message = "malformed HTTP request (a POST needs a body with Content-Length)";
                code = "bad_request"; break;
      default: message = "HTTP error " + std::to_string(res.status);
               code = "http_" + std::to_string(res.status);
    }
    res.set_content(dump(error_json(res.status, message, code)), "application/json");
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
  res.set_content(dump({{"status", "ok"},
                        {"queued", queue.size()},
                        {"active", active.get()}}),
                  "application/json");
}

void HttpServer::Impl::models(httplib::Response& res) {
  res.set_content(dump({{"object", "list"},
                        {"data", json::array({{{"id", options.model_name},
                                               {"object", "model"},
                                               {"created", 0},
                                               {"owned_by", "glmrt"}}})}}),
                  "application/json");
}

std::vector<int32_t> HttpServer::Impl::prompt_ids_from(const json& v, const std::string& field) const {
  if (!v.is_array())
    throw HttpError{400, "\"" + field + "\" must be a list of token ids", "invalid_type", field};
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const json& x = v[i];
    const std::string at = field + "[" + std::to_string(i) + "]";
    if (!x.is_number_integer())
      throw HttpError{400, "\"" + at + "\" must be an integer token id, got " + dump(x),
                      "invalid_type", field};
    if ((!x.is_number_unsigned() && x.get<int64_t>() < 0) ||
        x.get<uint64_t>() >= static_cast<uint64_t>(config.vocab_size))
      throw HttpError{400, "\"" + at + "\" = " + dump(x) + " is not a token id in [0, " +
                               std::to_string(config.vocab_size) + ")",
                      "invalid_value", field};
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return ids;
}

std::vector<int32_t> HttpServer::Impl::encode(const std::string& text, const std::string& field) const {
  if (!tokenizer)
    throw HttpError{400, "\"" + field + "\" needs a tokenizer, and the model config has none "
                         "(no tokenizer section); send token ids instead",
                    "no_tokenizer", field};
  try {
    return tokenizer->encode(text);
  } catch (const InputError& e) {
    throw HttpError{400, "\"" + field + "\": " + e.what(), "invalid_value", field};
  }
}

void HttpServer::Impl::check_prompt(const std::vector<int32_t>& ids, const std::string& field) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n > options.max_prompt_tokens)
    throw HttpError{400, "the prompt (\"" + field + "\") has " + std::to_string(n) +
                             " tokens, over the limit of " + std::to_string(options.max_prompt_tokens),
                    "prompt_too_long", field};
  const int64_t context = prepared_context_length(ids, config.tokens);
  if (context > config.max_sequence_length)
    throw HttpError{400, "the prompt (\"" + field + "\") has " + std::to_string(n) + " tokens, " +
                             std::to_string(context) + " with the [gMASK]/eos and sop the engine "
                             "adds, over the model's max_sequence_length " +
                             std::to_string(config.max_sequence_length),
                    "prompt_too_long", field};
}

void HttpServer::Impl::check_query(const GenerationRequest& r) const {
  try {
    validate_params(r.params, "request");
  } catch (const InputError& e) {
    throw HttpError{400, e.what(), "invalid_value"};
  }
  const std::string problem = GenerationEngine::check_request(r, config);
  if (!problem.empty()) throw HttpError{400, problem, "invalid_request"};
}

std::shared_ptr<Query> HttpServer::Impl::submit(GenerationRequest r, bool stream) {
  auto q = std::make_shared<Query>();
  PendingRequest p;
  p.request = std::move(r);
  if (stream) {
    const int32_t eop = config.tokens.eop, eos = config.tokens.eos;
    p.on_token = [q, eop, eos](int32_t token, int64_t blank) {
      if (token == eop || token == eos || blank < 0) return;  // stop tokens are not in the span
      {
        std::lock_guard<std::mutex> lock(q->mu);
        if (q->blanks.size() <= static_cast<size_t>(blank)) q->blanks.resize(blank + 1);
        q->blanks[blank].push_back(token);
        ++q->version;
      }
      q->cv.notify_all();
    };
  }
  p.on_done = [q](const GenerationResult& result) {
    {
      std::lock_guard<std::mutex> lock(q->mu);
      q->result = result;
      q->done = true;
    }
    q->cv.notify_all();
  };
  if (!queue.push(std::move(p)))
    throw HttpError{503, "the server is shutting down (the request queue is closed)", "unavailable"};
  return q;
}

const GenerationResult& HttpServer::Impl::wait(Query& q) {
  std::unique_lock<std::mutex> lock(q.mu);
  while (!q.cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return q.done; })) {
    if (stopping.load())
      throw HttpError{503, "the server stopped before the query was answered", "unavailable"};
  }
  if (!q.result.error.empty())
    throw HttpError{400, "generation failed: " + q.result.error, "generation_failed"};
  return q.result;
}

// ---- POST /generate -----------------------------------------------------------------------------

void HttpServer::Impl::generate(const httplib::Request& req, httplib::Response& res) {
  ActiveGuard counted(active);
  const json body = parse_body(req, options.max_body_bytes);
  Fields f(body);
  GenerationRequest r;
  r.params = defaults;
  const auto text = f.string("text");
  const json* ids = f.get("prompt_ids");
  if (text && ids)
    throw HttpError{400, "give either \"text\" or \"prompt_ids\", not both", "invalid_request", "text"};
  if (!text && !ids)
    throw HttpError{400, "missing \"text\" (or \"prompt_ids\": a list of token ids)",
                    "missing_field", "text"};
  if (const auto s = f.string("sampling_strategy")) {
    try {
      r.params.strategy = parse_strategy(*s, "sampling_strategy");
    } catch (const InputError& e) {
      throw HttpError{400, std::string(e.what()) +
                               " (BaseStrategy, BeamSearchStrategy, greedy, sample or beam)",
                      "invalid_value", "sampling_strategy"};
    }
  }
  if (const auto v = f.unsigned_integer("seed")) r.params.seed = *v;
  if (const auto v = f.integer("out_seq_length", 2)) r.params.out_seq_length = *v;
  if (const auto v = f.integer("min_gen_length", 0)) r.params.min_gen_length = *v;
  if (const auto v = f.integer("num_beams", 1, 64)) r.params.num_beams = *v;
  if (const auto v = f.number("length_penalty", -1e6, 1e6)) r.params.length_penalty = *v;
  if (const auto v = f.integer("no_repeat_ngram_size", 0)) r.params.no_repeat_ngram_size = *v;
  if (const auto v = f.number("temperature", 0, 1e6, true)) r.params.temperature = *v;
  if (const auto v = f.integer("topk", 0)) r.params.top_k = *v;
  if (const auto v = f.number("topp", 0, 1)) r.params.top_p = *v;
  if (const auto v = f.boolean("deterministic")) r.params.deterministic = *v;
  f.reject_unknown();

  const std::string field = text ? "text" : "prompt_ids";
  r.prompt_ids = text ? encode(*text, field) : prompt_ids_from(*ids, field);
  check_prompt(r.prompt_ids, field);
  check_query(r);

  auto q = submit(std::move(r), false);
  const GenerationResult& result = wait(*q);
  json out = json::object();
  if (tokenizer) out["text"] = json::array({decode(result.output_ids)});
  out["output_ids"] = result.output_ids;
  out["spans"] = result.spans;
  res.set_content(dump(out), "application/json");
}

// ---- POST /v1/completions -----------------------------------------------------------------------

namespace {

// What a completion chunk or response carries besides its choice.
struct CompletionMeta {
  std::string id;
  int64_t created;
  std::string model;
};

json completion_json(const CompletionMeta& m, const std::string& text, const json& finish_reason) {
  return {{"id", m.id},
          {"object", "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array({{{"text", text},
                                    {"index", 0},
                                    {"logprobs", nullptr},
                                    {"finish_reason", finish_reason}}})}};
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

// Turns a streamed query into server-sent events: one `data:` chunk per generated token that adds
// text (the blank's tokens are decoded whole and the new suffix is sent, holding back an
// incomplete UTF-8 tail), a final chunk with the rest and finish_reason, then `data: [DONE]`.
class EventStream {
 public:
  EventStream(std::shared_ptr<Query> q, const Tokenizer& tok, CompletionMeta meta, std::string echo,
              int64_t prompt_tokens, bool include_usage, const std::atomic<bool>& stopping)
      : q_(std::move(q)), tok_(tok), meta_(std::move(meta)), pending_echo_(echo),
        echo_prefix_(echo), prompt_tokens_(prompt_tokens), include_usage_(include_usage),
        stopping_(stopping), prefix_(echo) {}

  // cpp-httplib's chunked content provider: called until sink.done(); waits up to 100 ms for news.
  bool pump(httplib::DataSink& sink) {
    try {
      return pump_unguarded(sink);
    } catch (const std::exception& e) {
      write(sink, dump(error_json(500, std::string("internal error: ") + e.what(), "internal_error")));
      finish(sink);
      return true;
    }
  }

 private:
  bool pump_unguarded(httplib::DataSink& sink) {
    if (!pending_echo_.empty()) {
      emitted_ = std::move(pending_echo_);
      pending_echo_.clear();
      if (!write(sink, dump(completion_json(meta_, emitted_, nullptr)))) return false;
    }
    std::vector<std::vector<int32_t>> blanks;
    bool done;
    GenerationResult result;
    {
      std::unique_lock<std::mutex> lock(q_->mu);
      q_->cv.wait_for(lock, std::chrono::milliseconds(100),
                      [&] { return q_->done || q_->version != seen_version_; });
      if (!q_->done && q_->version == seen_version_) {
        if (!stopping_.load()) return sink.is_writable();
        lock.unlock();
        write(sink, dump(error_json(503, "the server stopped before the query was answered", "unavailable")));
        finish(sink);
        return true;
      }
      seen_version_ = q_->version;
      blanks = q_->blanks;
      done = q_->done;
      if (done) result = q_->result;
    }
    // One chunk per new token, in order.
    for (; blank_ < blanks.size(); ++blank_, token_ = 0) {
      const auto& tokens = blanks[blank_];
      for (; token_ < tokens.size(); ++token_) {
        const std::string text = tok_.decode({tokens.begin(), tokens.begin() + token_ + 1});
        const std::string stable = prefix_ + text.substr(0, utf8_stable_prefix(text));
        if (stable.size() > emitted_.size() && stable.compare(0, emitted_.size(), emitted_) == 0) {
          const std::string delta = stable.substr(emitted_.size());
          emitted_ = stable;
          if (!write(sink, dump(completion_json(meta_, delta, nullptr)))) return false;
        }
      }
      if (blank_ + 1 < blanks.size()) prefix_ += tok_.decode(tokens);  // this blank is complete
      else break;
    }
    if (!done) return true;

    if (!result.error.empty()) {
      write(sink, dump(error_json(400, "generation failed: " + result.error, "generation_failed")));
      finish(sink);
      return true;
    }
    std::string text = echo_prefix_;
    for (const auto& span : result.spans) text += tok_.decode(span);
    // The rest of the text (the held-back tail; everything for beam search, which streams nothing).
    const std::string rest = text.compare(0, emitted_.size(), emitted_) == 0 && text.size() >= emitted_.size()
                                 ? text.substr(emitted_.size())
                                 : std::string();
    const std::string reason = result.finish_reason.empty() ? "stop" : result.finish_reason;
    if (!write(sink, dump(completion_json(meta_, rest, reason)))) return false;
    if (include_usage_) {
      json usage = completion_json(meta_, "", nullptr);
      usage["choices"] = json::array();
      usage["usage"] = usage_json(prompt_tokens_, result.generated_tokens);
      if (!write(sink, dump(usage))) return false;
    }
    finish(sink);
    return true;
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

  std::shared_ptr<Query> q_;
  const Tokenizer& tok_;
  CompletionMeta meta_;
  std::string pending_echo_, echo_prefix_;
  int64_t prompt_tokens_;
  bool include_usage_;
  const std::atomic<bool>& stopping_;
  uint64_t seen_version_ = 0;
  size_t blank_ = 0, token_ = 0;  // the next token to turn into a chunk
  std::string prefix_;            // echo + the text of the completed blanks
  std::string emitted_;           // everything sent so far
};

}  // namespace

void HttpServer::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  auto counted = std::make_shared<ActiveGuard>(active);
  const json body = parse_body(req, options.max_body_bytes);
  Fields f(body);
  const auto zero = [](const json& v) { return v == json(0); };

  // The prompt: a string, a list of token ids, or a list holding exactly one of those.
  const json* prompt = f.get("prompt");
  if (!prompt) throw HttpError{400, "missing \"prompt\"", "missing_field", "prompt"};
  json one = *prompt;
  if (one.is_array() && !one.empty() && (one[0].is_string() || one[0].is_array())) {
    if (one.size() != 1)
      throw HttpError{400, "\"prompt\": only one prompt per request is supported, got " +
                               std::to_string(one.size()),
                      "unsupported_parameter", "prompt"};
    one = json(one[0]);
  }
  if (!one.is_string() && !one.is_array())
    throw HttpError{400, "\"prompt\" must be a string or a list of token ids, got " + dump(*prompt),
                    "invalid_type", "prompt"};
  if (!tokenizer)
    throw HttpError{400, "/v1/completions returns text and needs a tokenizer, and the model config "
                         "has none (no tokenizer section); use POST /generate with \"prompt_ids\"",
                    "no_tokenizer", "prompt"};
  std::string model = options.model_name;
  if (const auto m = f.string("model")) model = *m;
  const int64_t max_tokens = f.integer("max_tokens", 0).value_or(16);
  const auto temperature = f.number("temperature", 0, 2);
  const auto top_p = f.number("top_p", 0, 1);
  const auto top_k = f.integer("top_k", 0);
  const auto seed = f.unsigned_integer("seed");
  const auto min_tokens = f.integer("min_tokens", 0);
  f.unsupported("n", [](const json& v) { return v == json(1); }, "only n = 1 is supported");
  f.unsupported("best_of", [](const json& v) { return v == json(1); }, "only best_of = 1 is supported");
  const bool stream = f.boolean("stream").value_or(false);
  const bool echo = f.boolean("echo").value_or(false);
  bool include_usage = false;
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object() || (so->contains("include_usage") && !(*so)["include_usage"].is_boolean()))
      throw HttpError{400, "\"stream_options\" must be {\"include_usage\": true|false}", "invalid_type",
                      "stream_options"};
    include_usage = so->value("include_usage", false);
  }
  f.string("user");
  f.unsupported("stop", [](const json& v) { return v.is_array() && v.empty(); },
                "stop sequences are not implemented (generation stops at eop/eos or max_tokens)");
  f.unsupported("logprobs", [](const json&) { return false; }, "log-probabilities are not returned");
  f.unsupported("suffix", [](const json& v) { return v == json(""); },
                "put [MASK] in the prompt for infilling instead");
  f.unsupported("presence_penalty", zero, "no penalties are implemented");
  f.unsupported("frequency_penalty", zero, "no penalties are implemented");
  f.unsupported("logit_bias", [](const json& v) { return v.is_object() && v.empty(); },
                "logit biases are not implemented");
  f.reject_unknown();

  GenerationRequest r;
  r.prompt_ids = one.is_string() ? encode(one.get<std::string>(), "prompt") : prompt_ids_from(one, "prompt");
  check_prompt(r.prompt_ids, "prompt");
  // Sampling with the server's defaults (its beam search default becomes sampling: OpenAI's API
  // has no beams); any sampling knob in the request selects sampling, temperature 0 greedy.
  GenerationParams& p = r.params;
  p = defaults;
  if (p.strategy == Strategy::Beam || temperature || top_p || top_k) p.strategy = Strategy::Sample;
  if (temperature) {
    if (*temperature == 0) p.strategy = Strategy::Greedy;
    else p.temperature = *temperature;
  }
  if (top_p) p.top_p = *top_p;
  if (top_k) p.top_k = *top_k;
  if (seed) p.seed = *seed;
  if (min_tokens) p.min_gen_length = *min_tokens;
  p.out_seq_length = completion_out_seq_length(r.prompt_ids, max_tokens, config);
  check_query(r);

  const int64_t prompt_tokens = static_cast<int64_t>(r.prompt_ids.size());
  const std::string echo_text = echo ? decode(r.prompt_ids) : std::string();
  const CompletionMeta meta{completion_id(), static_cast<int64_t>(std::time(nullptr)), model};
  auto q = submit(std::move(r), stream);

  if (!stream) {
    const GenerationResult& result = wait(*q);
    json out = completion_json(meta, echo_text + spans_text(result.spans),
                               result.finish_reason.empty() ? "stop" : result.finish_reason);
    out["usage"] = usage_json(prompt_tokens, result.generated_tokens);
    res.set_content(dump(out), "application/json");
    return;
  }
  auto events = std::make_shared<EventStream>(q, *tokenizer, meta, echo_text, prompt_tokens,
                                              include_usage, stopping);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [events](size_t, httplib::DataSink& sink) { return events->pump(sink); },
      [counted](bool) {});  // the query counts as active until its stream is written
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
