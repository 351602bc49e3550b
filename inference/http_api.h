// The JSON API of `glmrt serve` (served by inference/http_server.h): the bodies of POST /generate
// and POST /v1/completions parsed and validated into GenerationRequests (field names, types,
// ranges, unknown fields, OpenAI's max_tokens → out_seq_length), the response bodies, the
// OpenAI-shaped error bodies, and the UTF-8 hold-back of streamed text. Nothing here knows HTTP
// connections or threads; every body goes in and comes out as JSON text.
//
// Errors are HttpErrors in OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for
// bad JSON, wrong types, out-of-range values, unknown fields and over-long prompts (each naming the
// field), 413 for a body over the limit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "inference/generation.h"
#include "model/glm_config.h"

namespace glmrt {

class Tokenizer;

// An error to answer a request with; error_body() is its JSON.
struct HttpError {
  HttpError(int s, std::string m, std::string c, std::string p = "")
      : status(s), message(std::move(m)), code(std::move(c)), param(std::move(p)) {}
  int status;
  std::string message, code, param;  // param: the request field at fault, if any
};

// {"error": {"message", "type", "param", "code"}}, the type following the status
// (invalid_request_error, not_found_error, method_not_allowed, request_too_large, server_error);
// an empty param is null.
std::string error_body(int status, const std::string& message, const std::string& code,
                       const std::string& param = "");
inline std::string error_body(const HttpError& e) {
  return error_body(e.status, e.message, e.code, e.param);
}

// ---- Requests -----------------------------------------------------------------------------------

// A POST /v1/completions query: the GenerationRequest and what shapes its answer.
// A completion's stop sequences ("stop": a string or up to 4): the completion ends before the
// first occurrence of any of them in the generated text, which is not part of the answer.
struct StopSequences {
  std::vector<std::string> sequences;

  bool empty() const { return sequences.empty(); }
  // Byte offset of the earliest occurrence of any sequence in `text`; npos when there is none.
  size_t find(const std::string& text) const;
  // How many leading bytes of `text` (which holds no sequence) a stream may send now: all but the
  // longest tail that could still grow into a sequence.
  size_t sendable(const std::string& text) const;
};

struct CompletionQuery {
  GenerationRequest request;
  std::string model;           // "model" of the response
  bool stream = false;         // server-sent events
  bool include_usage = false;  // stream_options.include_usage: a usage chunk before [DONE]
  std::string echo_text;       // the prompt's text when "echo" is set, else empty
  StopSequences stop;
  // "n": how many choices, each generated as its own query; sampled choice i uses seed + i, so
  // that the choices differ and a request with a seed is reproducible.
  int n = 1;
  // "best_of" (>= n): candidates generated (candidate i with seed + i); the n with the highest
  // mean log-probability per token are the choices, best first. Above n the queries compute
  // log-probabilities (request.params.logprobs >= 0) whether or not the answer shows them.
  int best_of = 1;
  bool show_logprobs = false;  // the request asked for "logprobs"
};

// The most choices ("n") one completion request may ask for.
inline constexpr int kMaxCompletionChoices = 16;

// Parses request bodies against one model and the server's limits.
class HttpApi {
 public:
  // `tokenizer` (null = token ids only, no text) must outlive the api. `defaults` are the
  // generation parameters of a query that does not set them. max_prompt_tokens 0 = the model's
  // max_sequence_length; model_name is "model" of a completion whose request names none.
  HttpApi(const Tokenizer* tokenizer, const GlmConfig& config, const GenerationParams& defaults,
          size_t max_body_bytes, int64_t max_prompt_tokens, std::string model_name);

  // POST /generate: {"text" | "prompt_ids", "seed", "out_seq_length", "min_gen_length",
  // "sampling_strategy", "num_beams", "length_penalty", "no_repeat_ngram_size", "temperature",
  // "topk", "topp", "deterministic"}. Throws HttpError.
  GenerationRequest parse_generate(const std::string& body) const;
  // POST /v1/completions (GLM blank filling on the prompt, a prompt without a mask is continued;
  // n, best_of, logprobs, stop, penalties, logit_bias, suffix: README "Serving"). Throws
  // HttpError.
  CompletionQuery parse_completion(const std::string& body) const;

  // POST /generate's answer: {"text": [answer], "output_ids": [...], "spans": [[...], ...]}
  // ("text" only with a tokenizer).
  std::string generate_response(const GenerationResult& result) const;
  // GET /v1/models: the one model.
  std::string models_response() const;

 private:
  const Tokenizer* tokenizer_;
  GlmConfig config_;
  GenerationParams defaults_;
  size_t max_body_bytes_;
  int64_t max_prompt_tokens_;
  std::string model_name_;
};

// The length of the first blank's context as the engine prepares `prompt_ids`
// (inference/SEMANTICS.md): the prompt, + [gMASK] when it holds no mask, + eos when it does not
// end with a mask, + sop.
int64_t prepared_context_length(const std::vector<int32_t>& prompt_ids, const TokenIds& tokens);

// out_seq_length for OpenAI's max_tokens: prepared_context_length + max_tokens, capped at the
// model's max_sequence_length. Exact for the first blank (a plain continuation has only one).
int64_t completion_out_seq_length(const std::vector<int32_t>& prompt_ids, int64_t max_tokens,
                                  const GlmConfig& config);

// ---- Responses ----------------------------------------------------------------------------------

// GET /health: {"status": "ok", "queued": n, "active": m}.
std::string health_response(size_t queued, int64_t active);

// What a completion chunk or response carries besides its choice.
struct CompletionMeta {
  std::string id;
  int64_t created;
  std::string model;
};

// A fresh "cmpl-…" id.
std::string completion_id();

// The finish_reason of a finished query ("stop" when the engine gave none).
std::string finish_reason(const GenerationResult& result);

// One generated token as OpenAI's "logprobs" shows it: its text (what it adds to its blank's
// decoded text), its log-probability and the most likely tokens' texts with theirs.
struct LogprobEntry {
  std::string text;
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
};

// The entry of token lp.token, generated after `before` (the earlier tokens of its blank).
LogprobEntry logprob_entry(const Tokenizer& tokenizer, const std::vector<int32_t>& before,
                           const TokenLogprobs& lp);

// A choice's (or a chunk's) logprobs: its entries and the character offset of the first one in
// the choice's text (the echoed prompt counts).
struct CompletionLogprobs {
  std::vector<LogprobEntry> entries;
  size_t text_offset = 0;
};

// The number of characters (code points) of UTF-8 text.
size_t utf8_length(const std::string& text);

// One choice of a completion; logprobs only when the request asked for them.
struct CompletionChoice {
  std::string text, finish_reason;
  std::optional<CompletionLogprobs> logprobs;
};

// A streamed text_completion chunk of choice `index`; finish_reason null while streaming;
// `logprobs` (may be null): the entries of the tokens this chunk's text comes from.
std::string completion_chunk(const CompletionMeta& meta, int index, const std::string& text,
                             const std::optional<std::string>& finish_reason,
                             const CompletionLogprobs* logprobs = nullptr);
// The non-streamed answer: every choice (index = its position) with its finish_reason, and the
// usage (completion_tokens: all choices together, as OpenAI counts them).
std::string completion_response(const CompletionMeta& meta,
                                const std::vector<CompletionChoice>& choices,
                                int64_t prompt_tokens, int64_t completion_tokens);
// The last chunk of a stream with include_usage: no choices, the usage.
std::string usage_chunk(const CompletionMeta& meta, int64_t prompt_tokens,
                        int64_t completion_tokens);

// How many leading bytes of `text` can be sent now without splitting a character: everything but
// an incomplete UTF-8 sequence at the end and a trailing U+FFFD (a decoder's stand-in for bytes
// whose character is not complete yet).
size_t utf8_stable_prefix(const std::string& text);

}  // namespace glmrt
