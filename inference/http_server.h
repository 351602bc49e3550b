// `glmrt serve`'s HTTP front end (cpp-httplib) on world rank 0: turns HTTP queries into
// PendingRequests on a RequestQueue that the generation engine drains, and the engine's callbacks
// back into responses (the request and response JSON is inference/http_api.h's). Endpoints:
//
//   GET  /health          {"status": "ok", "queued": n, "active": m}
//   POST /generate        the released GLM-130B server's API (GLM130B.md §5):
//                         {"text" | "prompt_ids", "seed", "out_seq_length", "min_gen_length",
//                          "sampling_strategy", "num_beams", "length_penalty",
//                          "no_repeat_ngram_size", "temperature", "topk", "topp", "deterministic"}
//                         → {"text": [answer], "output_ids": [...], "spans": [[...], ...]}
//   POST /v1/completions  OpenAI's completions API (text only, n = 1), with "stream": true as
//                         server-sent events; GLM blank filling on the prompt (a prompt without a
//                         mask is continued: the engine appends [gMASK]).
//   GET  /v1/models       the one model, for OpenAI clients that list models.
//   GET  /metrics         Prometheus' text format (inference/metrics.h).
//
// Errors are JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for bad
// JSON, wrong types, out-of-range values, unknown fields and over-long prompts (each naming the
// field), 404 unknown path, 405 wrong method, 413 body over the limit, 503 once the queue is
// closed, 500 for an unexpected exception in a handler (the server keeps serving).
//
// Threads: cpp-httplib serves every connection on a pool of `threads` workers; a handler pushes
// its query and blocks until the engine thread calls on_done, so the pool bounds the queries in
// flight over HTTP (≥ 100 concurrent clients with the default 128).
//
// A client that goes away cancels its queries: a stream when an event cannot be written, a
// waiting non-streamed request when its connection is closed or reset (inference/
// connection_watch.h, checked every 250 ms).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "inference/generation.h"
#include "inference/request_queue.h"
#include "model/glm_config.h"

namespace glmrt {

class Tokenizer;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                     // 0 = an ephemeral port (start() returns the bound one)
  size_t max_body_bytes = 1 << 20;     // larger request bodies get 413
  int64_t max_prompt_tokens = 0;       // 0 = the model's max_sequence_length
  int threads = 128;                   // connection worker threads
  std::string model_name = "glm";      // "model" of /v1 responses when the request names none
};

class HttpServer {
 public:
  // `queue` and `tokenizer` (null = token ids only, no text) must outlive the server.
  // `defaults` are the generation parameters of a query that does not set them.
  HttpServer(HttpServerOptions options, RequestQueue& queue, const Tokenizer* tokenizer,
             const GlmConfig& config, const GenerationParams& defaults);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port and serves on background threads; returns the bound port. Throws ConfigError
  // naming host:port when it cannot bind.
  int start();
  // Waits up to `drain` for the queries in flight to be answered (streams included), then stops
  // accepting, ends what is left (503 / an error event) and joins the threads. Idempotent.
  void stop(std::chrono::milliseconds drain = std::chrono::seconds(10));
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glmrt
