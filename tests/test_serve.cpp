// The HTTP layer of `glmrt serve` (inference/http_server.h, inference/http_api.h) against a fake
// engine: a thread that drains the RequestQueue and answers every query with a fixed text (English,
// Chinese and an emoji, so byte-fallback pieces make streamed UTF-8 arrive in pieces), cut at
// out_seq_length.
// The real engine behind the real server is tests/serve/serve_test.sh's business.
#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "data/tokenizer.h"
#include "inference/connection_watch.h"
#include "inference/http_api.h"
#include "inference/metrics.h"
#include "inference/http_server.h"
#include "launcher/commands.h"
#include "test_util.h"

namespace glmrt {
namespace {

using json = nlohmann::ordered_json;  // keys in the order written
using testing::source_path;

const std::string kAnswer = " the lake 地图上的小路 🙂 ok";

GlmConfig serve_config() {
  GlmConfig c;
  c.vocab_size = 816;
  c.max_sequence_length = 64;
  c.tokens = TokenIds{.mask = 800, .gmask = 801, .smask = 802, .eod = 803, .sop = 804, .eop = 805,
                      .eos = 2, .pad = 0};
  return c;
}

const Tokenizer& tokenizer() {
  static const std::string dir = testing::temp_dir("serve_tokenizer");
  static const Tokenizer tok = [] {
    const std::string path = dir + "/t.model";
    if (run_train_tokenizer({"--input", source_path("tests/data/tokenizer_corpus.txt"), "--vocab-size",
                             "800", "--output", path, "--threads", "2"}) != 0)
      throw std::runtime_error("train-tokenizer failed");
    return Tokenizer(path, serve_config());
  }();
  return tok;
}

// Answers each query with kAnswer's tokens (cut at out_seq_length), streaming them through
// on_token and ending the blank with eop, as the engine does.
class FakeEngine {
 public:
  FakeEngine(RequestQueue& queue, const GlmConfig& config, bool start_paused)
      : paused(start_paused), queue_(queue), config_(config), answer_(tokenizer().encode(kAnswer)),
        thread_([this] { run(); }) {}
  ~FakeEngine() {
    paused = false;
    hold = false;
    queue_.close();
    thread_.join();
  }
  std::atomic<bool> paused{false};
  // Takes queries but answers none: each is dropped (on_done with kCancelled) once its
  // `cancelled` turns true, and answered when `hold` is cleared.
  std::atomic<bool> hold{false};
  std::atomic<size_t> largest_batch{0};
  std::atomic<int64_t> answered{0}, dropped{0};
  // The sampling seed of every query answered, in order.
  std::vector<uint64_t> seeds() {
    std::lock_guard<std::mutex> lock(mu_);
    return seeds_;
  }

 private:
  void run() {
    for (;;) {
      if (paused.load()) {  // leaves the queries in the queue
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      std::vector<PendingRequest> batch = queue_.take(128, std::chrono::milliseconds(30));
      if (batch.empty() && held_.empty() && queue_.closed()) return;
      largest_batch = std::max(largest_batch.load(), batch.size());
      for (auto& p : batch) held_.push_back(std::move(p));
      std::vector<PendingRequest> still;
      for (auto& p : held_) {
        if (p.cancelled && p.cancelled()) {
          GenerationResult r;
          r.error = kCancelled;
          p.on_done(r);
          ++dropped;
        } else if (hold.load()) {
          still.push_back(std::move(p));
        } else {
          answer(p);
        }
      }
      held_ = std::move(still);
    }
  }
  void answer(PendingRequest& p) {
    const auto& r = p.request;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seeds_.push_back(r.params.seed);
    }
    const int64_t limit = std::min(r.params.out_seq_length, config_.max_sequence_length);
    const int64_t room = std::max<int64_t>(0, limit - prepared_context_length(r.prompt_ids, config_.tokens));
    GenerationResult result;
    std::vector<int32_t> span(answer_.begin(), answer_.begin() + std::min<int64_t>(room, answer_.size()));
    for (size_t i = 0; i < span.size(); ++i) {
      // With logprobs: token i at -0.25·(i + 1) - 0.5·(seed mod 3), the top list the token and
      // the ids above it.
      TokenLogprobs lp;
      lp.token = span[i];
      lp.logprob = -0.25f * static_cast<float>(i + 1) - 0.5f * static_cast<float>(r.params.seed % 3);
      for (int64_t j = 0; j < r.params.logprobs; ++j)
        lp.top.emplace_back(span[i] + static_cast<int32_t>(j), lp.logprob - static_cast<float>(j));
      if (r.params.logprobs >= 0) result.logprobs.push_back(lp);
      if (p.on_token) p.on_token(span[i], 0, r.params.logprobs >= 0 ? &lp : nullptr);
    }
    const bool cut = static_cast<int64_t>(answer_.size()) > room;
    if (!cut && p.on_token) p.on_token(config_.tokens.eop, 0, nullptr);
    result.output_ids = r.prompt_ids;
    result.output_ids.insert(result.output_ids.end(), span.begin(), span.end());
    result.spans = {span};
    result.generated_tokens = static_cast<int64_t>(span.size());
    result.finish_reason = cut ? "length" : "stop";
    p.on_done(result);
    ++answered;
  }

  std::mutex mu_;
  std::vector<uint64_t> seeds_;
  std::vector<PendingRequest> held_;  // the engine thread's
  RequestQueue& queue_;
  GlmConfig config_;
  std::vector<int32_t> answer_;
  std::thread thread_;
};

struct Fixture {
  explicit Fixture(bool with_tokenizer = true, bool paused = false, size_t max_body = 4096)
      : config(serve_config()), engine(queue, config, paused),
        server(HttpServerOptions{.host = "127.0.0.1", .port = 0, .max_body_bytes = max_body},
               queue, with_tokenizer ? &tokenizer() : nullptr, config, defaults()),
        port(server.start()), client("127.0.0.1", port) {
    client.set_read_timeout(30, 0);
  }
  static GenerationParams defaults() {
    GenerationParams p;
    p.out_seq_length = 64;
    return p;
  }
  httplib::Result post(const std::string& path, const std::string& body) {
    return client.Post(path.c_str(), body, "application/json");
  }
  // /health's count of requests being answered (-1: no answer).
  int64_t server_active() {
    httplib::Client c("127.0.0.1", port);
    const auto r = c.Get("/health");
    return r && r->status == 200 ? json::parse(r->body)["active"].get<int64_t>() : -1;
  }
  GlmConfig config;
  RequestQueue queue;
  FakeEngine engine;
  HttpServer server;
  int port;
  httplib::Client client;
};

// The status, and the body as JSON (errors: OpenAI's shape).
std::pair<int, json> call(httplib::Result r) {
  if (!r) return {-1, json()};
  json body;
  try {
    body = json::parse(r->body);
  } catch (...) {
    body = r->body;
  }
  return {r->status, body};
}

void expect_error(httplib::Result r, int status, const std::string& in_message) {
  const auto [code, body] = call(std::move(r));
  ASSERT_EQ(code, status) << body.dump();
  ASSERT_TRUE(body.contains("error")) << body.dump();
  EXPECT_NE(body["error"]["message"].get<std::string>().find(in_message), std::string::npos)
      << "message: " << body["error"]["message"] << ", expected to contain: " << in_message;
  EXPECT_TRUE(body["error"].contains("type"));
  EXPECT_TRUE(body["error"].contains("code"));
}

// The `data:` payloads of a server-sent event stream.
std::vector<std::string> events(const std::string& stream) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = stream.find("data: ", pos)) != std::string::npos) {
    const size_t end = stream.find("\n\n", pos);
    out.push_back(stream.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

TEST(ServeHttp, Utf8StablePrefix) {
  EXPECT_EQ(utf8_stable_prefix("abc"), 3u);
  EXPECT_EQ(utf8_stable_prefix("ab\xE5\x9C"), 2u);            // 地 without its last byte
  EXPECT_EQ(utf8_stable_prefix("ab\xE5\x9C\xB0"), 5u);        // 地
  EXPECT_EQ(utf8_stable_prefix("ab\xF0\x9F\x99"), 2u);        // 🙂 cut
  EXPECT_EQ(utf8_stable_prefix("ab\xEF\xBF\xBD"), 2u);        // trailing U+FFFD held back
  EXPECT_EQ(utf8_stable_prefix("a\xEF\xBF\xBD" "b"), 5u);     // not trailing: kept
}

TEST(ServeHttp, CompletionLength) {
  const GlmConfig c = serve_config();
  // No mask: + [gMASK] + sop; ending in a mask: + sop; a mask inside: + eos + sop.
  EXPECT_EQ(prepared_context_length({5, 6, 7}, c.tokens), 5);
  EXPECT_EQ(prepared_context_length({5, 800}, c.tokens), 3);
  EXPECT_EQ(prepared_context_length({5, 800, 7}, c.tokens), 5);
  EXPECT_EQ(completion_out_seq_length({5, 6, 7}, 8, c), 13);
  EXPECT_EQ(completion_out_seq_length({5, 6, 7}, 1000, c), 64);  // capped at max_sequence_length
}

// suffix becomes GLM blank infilling (prompt [MASK] suffix); logit_bias reaches the query's
// parameters; the bad forms of both are 400s that name the field.
TEST(ServeHttp, SuffixAndLogitBiasParse) {
  const GlmConfig config = serve_config();
  GenerationParams defaults;
  defaults.strategy = Strategy::Greedy;
  const HttpApi api(&tokenizer(), config, defaults, 1 << 16, 0, "m");
  const auto expect_400 = [&](const std::string& body, const std::string& needle) {
    try {
      api.parse_completion(body);
      ADD_FAILURE() << "accepted: " << body;
    } catch (const HttpError& e) {
      EXPECT_EQ(e.status, 400) << body;
      EXPECT_NE(e.message.find(needle), std::string::npos) << e.message;
    }
  };

  const CompletionQuery q = api.parse_completion(
      R"({"prompt": "The cook", "suffix": " the lake", "max_tokens": 5, "echo": true})");
  std::vector<int32_t> want = tokenizer().encode("The cook");
  want.push_back(config.tokens.mask);
  for (int32_t id : tokenizer().encode(" the lake")) want.push_back(id);
  EXPECT_EQ(q.request.prompt_ids, want);
  EXPECT_EQ(q.echo_text, tokenizer().decode(tokenizer().encode("The cook")));  // no [MASK], no suffix
  // The blank's room: the context (prompt, [MASK], suffix, eos, sop) plus max_tokens.
  EXPECT_EQ(q.request.params.out_seq_length, static_cast<int64_t>(want.size()) + 2 + 5);
  EXPECT_EQ(api.parse_completion(R"({"prompt": "a", "suffix": ""})").request.prompt_ids,
            tokenizer().encode("a"));  // an empty suffix is none
  expect_400(R"({"prompt": "a [MASK] b", "suffix": "c"})", "\"suffix\" with a mask token");
  expect_400(R"({"prompt": "a", "suffix": "b [gMASK]"})", "\"suffix\" holds a mask token");
  expect_400(R"({"prompt": "a", "suffix": 3})", "\"suffix\" must be a string");

  const CompletionQuery b = api.parse_completion(
      R"({"prompt": "a", "temperature": 0, "logit_bias": {"17": -100, "5": 2.5}})");
  std::vector<std::pair<int32_t, double>> bias = b.request.params.logit_bias;
  std::sort(bias.begin(), bias.end());
  EXPECT_EQ(bias, (std::vector<std::pair<int32_t, double>>{{5, 2.5}, {17, -100.0}}));
  EXPECT_TRUE(api.parse_completion(R"({"prompt": "a", "logit_bias": {}})").request.params.logit_bias.empty());
  expect_400(R"({"prompt": "a", "logit_bias": [1, 2]})", "\"logit_bias\" must be an object");
  expect_400(R"({"prompt": "a", "logit_bias": {"x1": 1}})", "key \"x1\" is not a token id");
  expect_400(R"({"prompt": "a", "logit_bias": {"12a": 1}})", "key \"12a\" is not a token id");
  expect_400(R"({"prompt": "a", "logit_bias": {"816": 1}})", "not a token id in [0, 816)");
  expect_400(R"({"prompt": "a", "logit_bias": {"-1": 1}})", "not a token id in [0, 816)");
  expect_400(R"({"prompt": "a", "logit_bias": {"7": 1, "07": 2}})", "token 7 is listed twice");
  expect_400(R"({"prompt": "a", "logit_bias": {"7": 101}})", "in [-100, 100], got 101");
  expect_400(R"({"prompt": "a", "logit_bias": {"7": "1"}})", "in [-100, 100], got \"1\"");
}

TEST(ServeHttp, HealthAndGenerate) {
  Fixture f;
  auto [status, health] = call(f.client.Get("/health"));
  ASSERT_EQ(status, 200);
  EXPECT_EQ(health["status"], "ok");
  EXPECT_EQ(health["queued"], 0);

  auto [s1, g1] = call(f.post("/generate", R"({"text": "Light travels", "sampling_strategy": "greedy"})"));
  ASSERT_EQ(s1, 200) << g1.dump();
  const auto ids = g1["output_ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(g1["text"][0].get<std::string>(), tokenizer().decode(ids));
  EXPECT_EQ(g1["text"][0].get<std::string>(), "Light travels" + kAnswer);
  ASSERT_EQ(g1["spans"].size(), 1u);
  EXPECT_EQ(tokenizer().decode(g1["spans"][0].get<std::vector<int32_t>>()), kAnswer);

  // The released server's fields, and prompt_ids instead of text.
  auto [s2, g2] = call(f.post("/generate", R"({"prompt_ids": [10, 11, 800, 12], "seed": 7,
      "out_seq_length": 8, "min_gen_length": 0, "sampling_strategy": "BaseStrategy", "num_beams": 2,
      "length_penalty": 0.5, "no_repeat_ngram_size": 2, "temperature": 0.7, "topk": 3, "topp": 0.9,
      "deterministic": true})"));
  ASSERT_EQ(s2, 200) << g2.dump();
  EXPECT_EQ(g2["spans"][0].size(), 2u);  // 8 - (4 + eos + sop)
}

TEST(ServeHttp, RequestErrors) {
  Fixture f;
  expect_error(f.post("/generate", "{\"text\": "), 400, "not valid JSON");
  expect_error(f.post("/generate", "[1, 2]"), 400, "JSON object");
  expect_error(f.post("/generate", R"({"text": "a", "top_k": 3, "bogus": 1})"), 400, "\"top_k\", \"bogus\"");
  expect_error(f.post("/generate", R"({"text": "a", "topk": "3"})"), 400, "\"topk\" must be an integer");
  expect_error(f.post("/generate", R"({"text": "a", "topk": -1})"), 400, "\"topk\"");
  expect_error(f.post("/generate", R"({"text": "a", "temperature": 0})"), 400, "\"temperature\"");
  expect_error(f.post("/generate", R"({"text": "a", "topp": 1.5})"), 400, "\"topp\"");
  expect_error(f.post("/generate", R"({"text": 5})"), 400, "\"text\" must be a string");
  expect_error(f.post("/generate", R"({"text": "a", "sampling_strategy": "nucleus"})"), 400, "nucleus");
  expect_error(f.post("/generate", R"({"seed": 1})"), 400, "missing \"text\"");
  expect_error(f.post("/generate", R"({"prompt_ids": [1, 816]})"), 400, "prompt_ids[1]");
  expect_error(f.post("/generate", R"({"prompt_ids": [1, -3]})"), 400, "prompt_ids[1]");
  std::string long_ids = "[1";
  for (int i = 0; i < 70; ++i) long_ids += ", 1";
  expect_error(f.post("/generate", R"({"prompt_ids": )" + long_ids + "]}"), 400, "71 tokens, over the limit of 64");
  long_ids = "[1";
  for (int i = 0; i < 62; ++i) long_ids += ", 1";  // 63 tokens + [gMASK] + sop = 65 > 64
  expect_error(f.post("/generate", R"({"prompt_ids": )" + long_ids + "]}"), 400, "max_sequence_length 64");
  expect_error(f.post("/generate", R"({"text": ")" + std::string(5000, 'a') + "\"}"), 413, "4096");
  expect_error(f.client.Get("/nowhere"), 404, "no such endpoint");
  expect_error(f.client.Get("/generate"), 405, "not allowed");
  expect_error(f.client.Delete("/health"), 405, "not allowed");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "n": 0})"), 400, "\"n\" must be an integer in [1, 16]");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "n": 17})"), 400, "\"n\"");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "n": 2, "best_of": 1})"), 400,
               "\"best_of\" (1) must be at least \"n\" (2)");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "n": 2, "best_of": 3, "stream": true})"), 400,
               "cannot be streamed");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "best_of": 17})"), 400, "\"best_of\"");
  expect_error(f.post("/v1/completions", R"({"prompt": ["a", "b"]})"), 400, "one prompt");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "presence_penalty": 2.5})"), 400, "\"presence_penalty\"");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "frequency_penalty": "x"})"), 400, "\"frequency_penalty\"");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "max_tokens": -1})"), 400, "\"max_tokens\"");
  // The server still answers.
  EXPECT_EQ(call(f.client.Get("/health")).first, 200);
  EXPECT_EQ(call(f.post("/generate", R"({"text": "a"})")).first, 200);

  Fixture ids_only(false);
  expect_error(ids_only.post("/generate", R"({"text": "a"})"), 400, "tokenizer");
  auto [s, g] = call(ids_only.post("/generate", R"({"prompt_ids": [5, 6]})"));
  ASSERT_EQ(s, 200);
  EXPECT_FALSE(g.contains("text"));
}

TEST(ServeHttp, CompletionsAndStream) {
  Fixture f;
  auto [s, c] = call(f.post("/v1/completions", R"({"model": "m", "prompt": "Light", "max_tokens": 100,
                                                   "temperature": 0})"));
  ASSERT_EQ(s, 200) << c.dump();
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["model"], "m");
  EXPECT_EQ(c["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(c["choices"][0]["text"], kAnswer);
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  const int64_t prompt_tokens = tokenizer().encode("Light").size();
  const int64_t answer_tokens = tokenizer().encode(kAnswer).size();
  EXPECT_EQ(c["usage"]["prompt_tokens"], prompt_tokens);
  EXPECT_EQ(c["usage"]["completion_tokens"], answer_tokens);
  EXPECT_EQ(c["usage"]["total_tokens"], prompt_tokens + answer_tokens);

  auto [s3, c3] = call(f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 3, "echo": true})"));
  ASSERT_EQ(s3, 200);
  EXPECT_EQ(c3["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c3["usage"]["completion_tokens"], 3);
  EXPECT_EQ(c3["choices"][0]["text"].get<std::string>().rfind("Light", 0), 0u);

  // Streamed: the chunks add up to the same text; no chunk splits a character.
  auto r = f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 100, "stream": true,
                                         "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const auto ev = events(r->body);
  ASSERT_GE(ev.size(), 4u) << r->body;
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string text;
  int finished = 0;
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    const json chunk = json::parse(ev[i]);
    if (chunk.contains("usage")) {
      EXPECT_EQ(chunk["usage"]["completion_tokens"], answer_tokens);
      continue;
    }
    const std::string piece = chunk["choices"][0]["text"];
    EXPECT_EQ(utf8_stable_prefix(piece), piece.size()) << "a chunk splits a character: " << piece;
    text += piece;
    if (!chunk["choices"][0]["finish_reason"].is_null()) {
      ++finished;
      EXPECT_EQ(chunk["choices"][0]["finish_reason"], "stop");
    }
  }
  EXPECT_EQ(finished, 1);
  EXPECT_EQ(text, kAnswer);
  EXPECT_GT(ev.size(), 6u);  // one chunk per token that completes text

  // Token ids as the prompt.
  auto [s4, c4] = call(f.post("/v1/completions", R"({"prompt": [5, 6, 7], "max_tokens": 2})"));
  ASSERT_EQ(s4, 200) << c4.dump();
  EXPECT_EQ(c4["usage"]["completion_tokens"], 2);
}

// "logprobs": OpenAI's object per choice — each generated token's text (the texts add up to the
// choice's text, a character split over tokens going whole to the token that completes it), its
// log-probability, the most likely tokens with theirs (the token itself always among them) and
// its character offset; streamed, each chunk carries the tokens its text comes from.
TEST(ServeHttp, Logprobs) {
  Fixture f;
  const auto check = [](const json& lp, const std::string& text, size_t first_offset, size_t top) {
    ASSERT_TRUE(lp.is_object()) << lp.dump();
    const size_t n = lp["tokens"].size();
    ASSERT_EQ(lp["token_logprobs"].size(), n);
    ASSERT_EQ(lp["top_logprobs"].size(), n);
    ASSERT_EQ(lp["text_offset"].size(), n);
    std::string joined;
    size_t offset = first_offset;
    for (size_t i = 0; i < n; ++i) {
      const std::string token = lp["tokens"][i];
      EXPECT_EQ(lp["text_offset"][i], offset) << "token " << i;
      offset += utf8_length(token);
      joined += token;
      const json& alternatives = lp["top_logprobs"][i];
      EXPECT_LE(alternatives.size(), top + 1);
      EXPECT_GE(alternatives.size(), 1u);
      ASSERT_TRUE(alternatives.contains(token)) << alternatives.dump();
      EXPECT_FLOAT_EQ(alternatives[token].get<float>(), lp["token_logprobs"][i].get<float>());
    }
    EXPECT_EQ(joined, text);
  };
  const int64_t answer_tokens = tokenizer().encode(kAnswer).size();
  auto [s, c] = call(f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 100, "logprobs": 2,
                                                   "seed": 3})"));
  ASSERT_EQ(s, 200) << c.dump();
  const json& lp = c["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), static_cast<size_t>(answer_tokens));
  for (int64_t i = 0; i < answer_tokens; ++i)  // the fake engine's values for seed 3: -0.25 · (i + 1)
    EXPECT_FLOAT_EQ(lp["token_logprobs"][i].get<float>(), -0.25f * static_cast<float>(i + 1));
  check(lp, kAnswer, 0, 2);
  EXPECT_NE(std::find(lp["tokens"].begin(), lp["tokens"].end(), json("")), lp["tokens"].end())
      << "the answer's emoji spans several byte tokens: all but the last add no text";

  // Without "logprobs": null; logprobs 0: only the token itself.
  auto [s0, c0] = call(f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 4})"));
  EXPECT_TRUE(c0["choices"][0]["logprobs"].is_null());
  auto [s1, c1] = call(f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 4, "logprobs": 0})"));
  ASSERT_EQ(s1, 200) << c1.dump();
  check(c1["choices"][0]["logprobs"], c1["choices"][0]["text"], 0, 0);

  // A stop sequence cuts the tokens too.
  auto [s2, c2] = call(f.post("/v1/completions",
                              R"({"prompt": "Light", "max_tokens": 100, "logprobs": 1, "stop": "小路"})"));
  ASSERT_EQ(s2, 200) << c2.dump();
  const std::string cut = c2["choices"][0]["text"];
  const json& lp2 = c2["choices"][0]["logprobs"];
  std::string joined;
  for (const auto& t : lp2["tokens"]) joined += t.get<std::string>();
  EXPECT_EQ(joined.substr(0, cut.size()), cut);
  EXPECT_LT(lp2["tokens"].size(), static_cast<size_t>(answer_tokens));
  EXPECT_LT(utf8_length(joined) - utf8_length(cut), 3u) << "only the tokens before the cut (and the one over it)";

  // Streamed: the chunks' entries are the same tokens, offsets running on across chunks.
  auto r = f.post("/v1/completions",
                  R"({"prompt": "Light", "max_tokens": 100, "stream": true, "logprobs": 2, "seed": 3})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  json all = {{"tokens", json::array()}, {"token_logprobs", json::array()},
              {"top_logprobs", json::array()}, {"text_offset", json::array()}};
  std::string text;
  for (const std::string& e : events(r->body)) {
    if (e == "[DONE]") break;
    const json chunk = json::parse(e);
    text += chunk["choices"][0]["text"].get<std::string>();
    const json& part = chunk["choices"][0]["logprobs"];
    ASSERT_TRUE(part.is_object()) << e;
    for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
      for (const auto& v : part[key]) all[key].push_back(v);
  }
  EXPECT_EQ(text, kAnswer);
  EXPECT_EQ(all["tokens"], lp["tokens"]);
  EXPECT_EQ(all["token_logprobs"], lp["token_logprobs"]);
  check(all, kAnswer, 0, 2);

  expect_error(f.post("/v1/completions", R"({"prompt": "a", "logprobs": 6})"), 400, "\"logprobs\"");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "logprobs": true})"), 400, "\"logprobs\"");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "logprobs": 1, "echo": true})"), 400,
               "bidirectional");
}

// "best_of": best_of candidates (seeds seed, seed + 1, ...), the n with the highest mean
// log-probability per token returned best first; usage counts every candidate's tokens; the
// logprobs used for ranking are shown only when asked for.
TEST(ServeHttp, BestOf) {
  Fixture f;
  const int64_t answer_tokens = tokenizer().encode(kAnswer).size();
  // Seeds 10, 11, 12: the fake engine's mean logprobs rank 12 (12 mod 3 = 0), 10, 11.
  auto [s, c] = call(f.post("/v1/completions", R"({"prompt": "Light", "seed": 10, "n": 2, "best_of": 3, "max_tokens": 100,
                                                   "logprobs": 0})"));
  ASSERT_EQ(s, 200) << c.dump();
  ASSERT_EQ(c["choices"].size(), 2u);
  EXPECT_EQ(c["choices"][0]["index"], 0);
  EXPECT_EQ(c["choices"][1]["index"], 1);
  EXPECT_FLOAT_EQ(c["choices"][0]["logprobs"]["token_logprobs"][0].get<float>(), -0.25f);  // seed 12
  EXPECT_FLOAT_EQ(c["choices"][1]["logprobs"]["token_logprobs"][0].get<float>(), -0.75f);  // seed 10
  EXPECT_EQ(c["usage"]["completion_tokens"], 3 * answer_tokens);
  const std::vector<uint64_t> seeds = f.engine.seeds();
  ASSERT_GE(seeds.size(), 3u);
  EXPECT_EQ(std::vector<uint64_t>(seeds.end() - 3, seeds.end()), (std::vector<uint64_t>{10, 11, 12}));

  auto [s2, c2] = call(f.post("/v1/completions", R"({"prompt": "Light", "seed": 10, "best_of": 3})"));
  ASSERT_EQ(s2, 200) << c2.dump();
  ASSERT_EQ(c2["choices"].size(), 1u);
  EXPECT_TRUE(c2["choices"][0]["logprobs"].is_null()) << "ranked by logprobs, which were not asked for";
  EXPECT_EQ(c2["choices"][0]["text"], kAnswer.substr(0, c2["choices"][0]["text"].get<std::string>().size()));
}

// "n": choice i is its own query, sampled with seed + i (tests/serve/serve_test.sh checks on the
// real engine that it is the answer of a one-choice request with that seed); streamed, the chunks
// of the choices interleave, each with its index and one finish_reason, and the usage counts the
// tokens of all of them.
TEST(ServeHttp, SeveralChoices) {
  Fixture f;
  const int64_t answer_tokens = tokenizer().encode(kAnswer).size();
  auto [s, c] = call(f.post("/v1/completions", R"({"prompt": "Light", "seed": 40, "n": 3, "best_of": 3,
                                                   "max_tokens": 100, "temperature": 1.0})"));
  ASSERT_EQ(s, 200) << c.dump();
  ASSERT_EQ(c["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(c["choices"][i]["index"], i);
    EXPECT_EQ(c["choices"][i]["text"], kAnswer) << "choice " << i;
    EXPECT_EQ(c["choices"][i]["finish_reason"], "stop") << "choice " << i;
  }
  EXPECT_EQ(c["usage"]["completion_tokens"], 3 * answer_tokens);
  std::vector<uint64_t> seeds = f.engine.seeds();
  std::sort(seeds.begin(), seeds.end());
  EXPECT_EQ(seeds, (std::vector<uint64_t>{40, 41, 42}));

  auto r = f.post("/v1/completions", R"({"prompt": "Light", "seed": 7, "n": 3, "stream": true,
                                         "max_tokens": 100, "temperature": 1.0,
                                         "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const auto ev = events(r->body);
  ASSERT_GE(ev.size(), 8u) << r->body;
  EXPECT_EQ(ev.back(), "[DONE]");
  std::vector<std::string> text(3);
  std::vector<int> finished(3, 0);
  int64_t usage = -1;
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    const json chunk = json::parse(ev[i]);
    if (chunk.contains("usage")) {
      usage = chunk["usage"]["completion_tokens"];
      EXPECT_EQ(i + 2, ev.size()) << "the usage chunk comes last";
      continue;
    }
    ASSERT_EQ(chunk["choices"].size(), 1u);
    const int index = chunk["choices"][0]["index"];
    ASSERT_TRUE(index >= 0 && index < 3) << index;
    EXPECT_EQ(finished[static_cast<size_t>(index)], 0) << "a chunk after choice " << index << " ended";
    text[static_cast<size_t>(index)] += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null()) ++finished[static_cast<size_t>(index)];
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(finished[static_cast<size_t>(i)], 1) << "choice " << i;
    EXPECT_EQ(text[static_cast<size_t>(i)], kAnswer) << "choice " << i;
  }
  EXPECT_EQ(usage, 3 * answer_tokens);
}

// "stop": the completion ends before the first stop sequence, plain and streamed (the streamed
// chunks add up to the same text; a tail that could grow into a sequence is held back), echo
// kept; a sequence that never comes changes nothing; bad values are refused by name.
TEST(ServeHttp, StopSequences) {
  Fixture f;
  const std::string before = kAnswer.substr(0, kAnswer.find("小路"));
  for (const std::string stop : {R"("小路")", R"(["zzz", "小路", "湖"])", R"(["上的小路", "小路"])"}) {
    SCOPED_TRACE(stop);
    auto [s, c] = call(f.post("/v1/completions",
                              R"({"prompt": "Light", "max_tokens": 100, "stop": )" + stop + "}"));
    ASSERT_EQ(s, 200) << c.dump();
    const std::string expected = stop.find("上的小路") != std::string::npos
                                     ? kAnswer.substr(0, kAnswer.find("上的小路"))
                                     : before;
    EXPECT_EQ(c["choices"][0]["text"], expected);
    EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");

    auto r = f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 100, "stream": true,
                                           "echo": true, "stop": )" + stop + "}");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    const auto ev = events(r->body);
    ASSERT_GE(ev.size(), 2u) << r->body;
    EXPECT_EQ(ev.back(), "[DONE]");
    std::string text, reason;
    for (size_t i = 0; i + 1 < ev.size(); ++i) {
      const json chunk = json::parse(ev[i]);
      text += chunk["choices"][0]["text"].get<std::string>();
      if (!chunk["choices"][0]["finish_reason"].is_null()) reason = chunk["choices"][0]["finish_reason"];
    }
    EXPECT_EQ(text, "Light" + expected);
    EXPECT_EQ(reason, "stop");
  }
  auto [s2, c2] = call(f.post("/v1/completions", R"({"prompt": "Light", "max_tokens": 100, "stop": ["never"]})"));
  ASSERT_EQ(s2, 200);
  EXPECT_EQ(c2["choices"][0]["text"], kAnswer);
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "stop": 5})"), 400, "\"stop\"");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "stop": [""]})"), 400, "must not be empty");
  expect_error(f.post("/v1/completions", R"({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})"), 400,
               "at most 4");
}

TEST(ServeHttp, StopSequenceTailIsHeldBack) {
  StopSequences stop{{"abc", "xy"}};
  EXPECT_EQ(stop.find("12abc3xy"), 2u);
  EXPECT_EQ(stop.find("12ab"), std::string::npos);
  EXPECT_EQ(stop.sendable("12ab"), 2u);  // "ab" may become "abc"
  EXPECT_EQ(stop.sendable("12a"), 2u);
  EXPECT_EQ(stop.sendable("12x"), 2u);
  EXPECT_EQ(stop.sendable("12b"), 3u);
  EXPECT_EQ(stop.sendable(""), 0u);
}

TEST(ServeHttp, HundredConcurrentRequestsAreBatched) {
  Fixture f(true, /*paused=*/true);  // let them all queue up
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 100; ++i)
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", f.port);
      c.set_read_timeout(60, 0);
      const std::string body = i % 2 ? R"({"text": "Light", "out_seq_length": 10})"
                                     : R"({"prompt": "Light", "max_tokens": 4, "stream": )" +
                                           std::string(i % 4 ? "true" : "false") + "}";
      auto r = c.Post(i % 2 ? "/generate" : "/v1/completions", body, "application/json");
      if (r && r->status == 200) ++ok;
    });
  for (int i = 0; i < 200 && f.queue.size() < 100; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(call(f.client.Get("/health")).second["queued"], f.queue.size());
  f.engine.paused = false;
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 100);
  EXPECT_GE(f.engine.largest_batch.load(), 90u);
}

TEST(ServeHttp, ClosedQueueAndStop) {
  Fixture f(true, /*paused=*/true);
  std::thread waiting([&] {
    httplib::Client c("127.0.0.1", f.port);
    expect_error(c.Post("/generate", R"({"text": "a"})", "application/json"), 503, "stopped");
  });
  while (f.queue.size() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  f.queue.close();
  expect_error(f.post("/generate", R"({"text": "a"})"), 503, "shutting down");
  const auto start = std::chrono::steady_clock::now();
  f.server.stop(std::chrono::milliseconds(200));  // the paused query is answered 503
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  waiting.join();
}

// ---- A client that goes away before a non-streamed answer ----------------------------------------

TEST(ConnectionWatch, ReadsTheKernelsTcpTables) {
  // 127.0.0.1:8000 <- 127.0.0.1:51234 established, <- :51235 closed by the peer; the server of an
  // IPv6 socket sees an IPv4 client as ::ffff:10.1.2.3 and ::1 as itself.
  const std::string v4 =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
      "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
      "   1: 0100007F:1F40 0100007F:C822 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
      "   2: 0100007F:1F40 0100007F:C823 08 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
  const auto state = [](const std::string& t, bool v6, const char* l, int lp, const char* r, int rp) {
    return tcp_lookup(t, v6, l, lp, r, rp).state;
  };
  EXPECT_EQ(state(v4, false, "127.0.0.1", 8000, "127.0.0.1", 51234), kTcpEstablished);
  EXPECT_EQ(state(v4, false, "127.0.0.1", 8000, "127.0.0.1", 51235), kTcpCloseWait);
  EXPECT_EQ(state(v4, false, "127.0.0.1", 8000, "127.0.0.1", 51236), std::nullopt);
  EXPECT_TRUE(tcp_lookup(v4, false, "127.0.0.1", 8000, "127.0.0.1", 51236).listening);
  EXPECT_EQ(state(v4, false, "127.0.0.1", 8000, "127.0.0.2", 51234), std::nullopt);
  EXPECT_EQ(state(v4, false, "127.0.0.1", 8001, "127.0.0.1", 51234), std::nullopt);
  EXPECT_FALSE(tcp_lookup(v4, false, "127.0.0.1", 8001, "127.0.0.1", 51234).listening);
  EXPECT_EQ(state(v4, false, "not an address", 8000, "127.0.0.1", 51234), std::nullopt);
  const std::string v6 =
      "  sl  local_address                         remote_address                        st\n"
      "   0: 0000000000000000FFFF00000100007F:1F40 0000000000000000FFFF00000302010A:C822 08 0\n"
      "   1: 00000000000000000000000001000000:1F40 00000000000000000000000001000000:C824 01 0\n";
  EXPECT_EQ(state(v6, true, "::ffff:127.0.0.1", 8000, "::ffff:10.1.2.3", 51234), kTcpCloseWait);
  EXPECT_EQ(state(v6, true, "127.0.0.1", 8000, "10.1.2.3", 51234), kTcpCloseWait);
  EXPECT_EQ(state(v6, true, "::1", 8000, "::1", 51236), kTcpEstablished);
  EXPECT_EQ(state(v6, true, "::1", 8000, "::1", 51234), std::nullopt);
  EXPECT_FALSE(tcp_lookup(v6, true, "::1", 8000, "::1", 51234).listening);
}

// A raw HTTP/1.1 POST on its own connection, which the test closes without reading the answer
// (`reset`: with SO_LINGER 0, so the server's side sees a reset instead of a FIN).
int post_and_leave(int port, const std::string& path, const std::string& body) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  const std::string request = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  if (::send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) return -1;
  return fd;
}
void leave(int fd, bool reset) {
  if (reset) {
    linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  ::close(fd);
}

bool wait_until(const std::function<bool()>& ok, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!ok()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

TEST(ServeHttp, ClientThatGoesAwayBeforeItsAnswerHasItsQueryDropped) {
  Fixture f;
  f.engine.hold = true;
  // /generate, closed with a FIN, then /v1/completions with n = 2, closed with a reset: every query
  // of theirs is dropped, within about a second each.
  const int a = post_and_leave(f.port, "/generate", R"({"text": "Light travels", "sampling_strategy": "greedy"})");
  ASSERT_GE(a, 0);
  ASSERT_TRUE(wait_until([&] { return f.queue.size() == 0 && f.server_active() == 1; }, std::chrono::seconds(10)));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // still connected: still running
  EXPECT_EQ(f.engine.dropped.load(), 0);
  leave(a, false);
  EXPECT_TRUE(wait_until([&] { return f.engine.dropped.load() == 1; }, std::chrono::seconds(5)));
  const int b = post_and_leave(f.port, "/v1/completions", R"({"prompt": "Light travels", "n": 2, "seed": 3})");
  ASSERT_GE(b, 0);
  ASSERT_TRUE(wait_until([&] { return f.queue.size() == 0 && f.server_active() == 1; }, std::chrono::seconds(10)));
  leave(b, true);
  EXPECT_TRUE(wait_until([&] { return f.engine.dropped.load() == 3; }, std::chrono::seconds(5)));

  // A client that stays gets its answer once the engine answers; nothing else was dropped.
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    f.engine.hold = false;
  });
  auto [status, body] = call(f.post("/generate", R"({"text": "Light travels", "sampling_strategy": "greedy"})"));
  release.join();
  EXPECT_EQ(status, 200) << body.dump();
  EXPECT_EQ(f.engine.dropped.load(), 3);
  EXPECT_TRUE(wait_until([&] { return f.server_active() == 0; }, std::chrono::seconds(5)));
}

TEST(ServeHttp, MetricsCountRequestsQueriesAndTokens) {
  Fixture f;
  auto [s1, g1] = call(f.post("/generate", R"({"prompt_ids": [10, 11, 12], "sampling_strategy": "greedy"})"));
  ASSERT_EQ(s1, 200) << g1.dump();
  auto [s2, c2] = call(f.post("/v1/completions", R"({"prompt": "Light travels", "max_tokens": 5})"));
  ASSERT_EQ(s2, 200) << c2.dump();
  expect_error(f.post("/generate", R"({"text": )"), 400, "JSON");
  expect_error(f.client.Get("/nowhere"), 404, "no such endpoint");
  const int64_t generated = static_cast<int64_t>(g1["spans"][0].size()) + c2["usage"]["completion_tokens"].get<int64_t>();
  const int64_t prompt = 3 + c2["usage"]["prompt_tokens"].get<int64_t>();

  // A response is counted by the server's logger after its last byte, so the client can read
  // it before it is counted: scrape until the four responses above are all in.
  const std::regex sample(R"(^([a-z_]+(\{[^}]*\})?) (-?[0-9.]+(e[-+]?[0-9]+)?)$)");
  std::map<std::string, double> values;
  auto scrape = [&] {
    const auto r = f.client.Get("/metrics");
    EXPECT_TRUE(r && r->status == 200);
    if (!r || r->status != 200) return false;
    EXPECT_EQ(r->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0), 0u);
    values.clear();
    std::istringstream lines(r->body);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
      std::smatch m;
      EXPECT_TRUE(std::regex_match(line, m, sample)) << "not a Prometheus sample: " << line;
      if (m.size() > 3) values[m[1]] = std::stod(m[3]);
    }
    double counted = 0;
    for (const char* key : {R"(glmrt_http_requests_total{path="/generate",status="200"})",
                            R"(glmrt_http_requests_total{path="/generate",status="400"})",
                            R"(glmrt_http_requests_total{path="/v1/completions",status="200"})",
                            R"(glmrt_http_requests_total{path="other",status="404"})"})
      counted += values[key];
    return counted >= 4;
  };
  ASSERT_TRUE(wait_until(scrape, std::chrono::seconds(5))) << "the four responses were not all counted";
  EXPECT_EQ(values[R"(glmrt_http_requests_total{path="/generate",status="200"})"], 1);
  EXPECT_EQ(values[R"(glmrt_http_requests_total{path="/generate",status="400"})"], 1);
  EXPECT_EQ(values[R"(glmrt_http_requests_total{path="/v1/completions",status="200"})"], 1);
  EXPECT_EQ(values[R"(glmrt_http_requests_total{path="other",status="404"})"], 1);
  EXPECT_EQ(values[R"(glmrt_queries_total{outcome="ok"})"], 2);
  EXPECT_EQ(values[R"(glmrt_queries_total{outcome="error"})"], 0);
  EXPECT_EQ(values["glmrt_generated_tokens_total"], generated);
  EXPECT_EQ(values["glmrt_prompt_tokens_total"], prompt);
  EXPECT_EQ(values["glmrt_queue_length"], 0);
  EXPECT_EQ(values["glmrt_requests_active"], 0);
  // The duration histogram of /generate: two requests, cumulative buckets ending at the count.
  EXPECT_EQ(values[R"(glmrt_http_request_duration_seconds_count{path="/generate"})"], 2);
  EXPECT_EQ(values[R"(glmrt_http_request_duration_seconds_bucket{path="/generate",le="+Inf"})"], 2);
  double last = 0;
  for (const double le : ServerMetrics::duration_buckets()) {
    char key[160];
    std::snprintf(key, sizeof key, R"(glmrt_http_request_duration_seconds_bucket{path="/generate",le="%.10g"})", le);
    ASSERT_TRUE(values.count(key)) << key;
    EXPECT_GE(values[key], last);
    last = values[key];
  }
  EXPECT_GT(values[R"(glmrt_http_request_duration_seconds_sum{path="/generate"})"], 0);
  expect_error(f.post("/metrics", "{}"), 405, "not allowed");
}

}  // namespace
}  // namespace glmrt
