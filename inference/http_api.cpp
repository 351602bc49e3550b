// The JSON API of `glmrt serve` (inference/http_api.h): request bodies parsed and validated into
// GenerationRequests, response and error bodies built.
#include "inference/http_api.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "data/tokenizer.h"
#include "inference/engine.h"
#include "kernels/error.h"

namespace glmrt {

using json = nlohmann::ordered_json;  // keys in the order written

namespace {

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
json parse_body(const std::string& body, size_t max_bytes) {
  if (body.size() > max_bytes)
    throw HttpError{413, "the request body has " + std::to_string(body.size()) +
                             " bytes, over the limit of " + std::to_string(max_bytes) + " bytes",
                    "body_too_large"};
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw HttpError{400, std::string("the body is not valid JSON: ") + e.what(), "invalid_json"};
  }
  if (!j.is_object())
    throw HttpError{400, "the body must be a JSON object, got " + std::string(j.type_name()),
                    "invalid_json"};
  return j;
}

// ---- Prompts and queries ------------------------------------------------------------------------

std::vector<int32_t> prompt_ids_from(const json& v, const std::string& field, int64_t vocab_size) {
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
        x.get<uint64_t>() >= static_cast<uint64_t>(vocab_size))
      throw HttpError{400, "\"" + at + "\" = " + dump(x) + " is not a token id in [0, " +
                               std::to_string(vocab_size) + ")",
                      "invalid_value", field};
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return ids;
}

// OpenAI's logit_bias: {"token id": bias in [-100, 100], ...}, at most kMaxLogitBias entries.
std::vector<std::pair<int32_t, double>> parse_logit_bias(const json& v, int64_t vocab_size) {
  const auto bad = [](const std::string& why, const char* code) {
    return HttpError{400, "\"logit_bias\" " + why, code, "logit_bias"};
  };
  if (!v.is_object())
    throw bad("must be an object mapping token ids to biases, got " + dump(v), "invalid_type");
  if (v.size() > kMaxLogitBias)
    throw bad("holds at most " + std::to_string(kMaxLogitBias) + " tokens, got " +
                  std::to_string(v.size()),
              "invalid_value");
  std::vector<std::pair<int32_t, double>> out;
  std::set<int32_t> seen;
  for (const auto& [key, value] : v.items()) {
    const std::string at = "key \"" + key + "\"";
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(key, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != key.size() || key[0] == '+' || key[0] == ' ')
      throw bad(at + " is not a token id", "invalid_value");
    if (id < 0 || id >= vocab_size)
      throw bad(at + " is not a token id in [0, " + std::to_string(vocab_size) + ")", "invalid_value");
    if (!seen.insert(static_cast<int32_t>(id)).second)
      throw bad(at + ": token " + std::to_string(id) + " is listed twice", "invalid_value");
    if (!value.is_number())
      throw bad(at + ": the bias must be a number in [-100, 100], got " + dump(value), "invalid_type");
    const double bias = value.get<double>();
    if (!std::isfinite(bias) || bias < -100 || bias > 100)
      throw bad(at + ": the bias must be a number in [-100, 100], got " + dump(value), "invalid_value");
    out.emplace_back(static_cast<int32_t>(id), bias);
  }
  return out;
}

std::vector<int32_t> encode(const Tokenizer* tokenizer, const std::string& text,
                            const std::string& field) {
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

void check_prompt(const std::vector<int32_t>& ids, const std::string& field,
                  int64_t max_prompt_tokens, const GlmConfig& config) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n > max_prompt_tokens)
    throw HttpError{400, "the prompt (\"" + field + "\") has " + std::to_string(n) +
                             " tokens, over the limit of " + std::to_string(max_prompt_tokens),
                    "prompt_too_long", field};
  const int64_t context = prepared_context_length(ids, config.tokens);
  if (context > config.max_sequence_length)
    throw HttpError{400, "the prompt (\"" + field + "\") has " + std::to_string(n) + " tokens, " +
                             std::to_string(context) + " with the [gMASK]/eos and sop the engine "
                             "adds, over the model's max_sequence_length " +
                             std::to_string(config.max_sequence_length),
                    "prompt_too_long", field};
}

void check_query(const GenerationRequest& r, const GlmConfig& config) {
  try {
    validate_params(r.params, "request");
  } catch (const InputError& e) {
    throw HttpError{400, e.what(), "invalid_value"};
  }
  const std::string problem = GenerationEngine::check_request(r, config);
  if (!problem.empty()) throw HttpError{400, problem, "invalid_request"};
}

// OpenAI's logprobs object: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. A token's
// top_logprobs holds the most likely tokens and always the token itself (so up to logprobs + 1
// entries, as OpenAI's); two tokens with the same text keep the higher log-probability.
json logprobs_json(const CompletionLogprobs& lp) {
  json tokens = json::array(), values = json::array(), top = json::array(), offsets = json::array();
  size_t offset = lp.text_offset;
  for (const LogprobEntry& e : lp.entries) {
    tokens.push_back(e.text);
    values.push_back(e.logprob);
    json alternatives = json::object();
    for (const auto& [text, value] : e.top)
      if (!alternatives.contains(text)) alternatives[text] = value;
    if (!alternatives.contains(e.text)) alternatives[e.text] = e.logprob;
    top.push_back(std::move(alternatives));
    offsets.push_back(offset);
    offset += utf8_length(e.text);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(values)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

json choice_json(int index, const std::string& text, const json& finish_reason,
                 const CompletionLogprobs* logprobs = nullptr) {
  return {{"text", text},
          {"index", index},
          {"logprobs", logprobs ? logprobs_json(*logprobs) : json(nullptr)},
          {"finish_reason", finish_reason}};
}

json completion_json(const CompletionMeta& m, json choices) {
  return {{"id", m.id},
          {"object", "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", std::move(choices)}};
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

}  // namespace

std::string error_body(int status, const std::string& message, const std::string& code,
                       const std::string& param) {
  return dump(error_json(status, message, code, param));
}

// ---- Requests -----------------------------------------------------------------------------------

HttpApi::HttpApi(const Tokenizer* tokenizer, const GlmConfig& config, const GenerationParams& defaults,
                 size_t max_body_bytes, int64_t max_prompt_tokens, std::string model_name)
    : tokenizer_(tokenizer), config_(config), defaults_(defaults), max_body_bytes_(max_body_bytes),
      max_prompt_tokens_(max_prompt_tokens > 0 ? max_prompt_tokens : config.max_sequence_length),
      model_name_(std::move(model_name)) {}

GenerationRequest HttpApi::parse_generate(const std::string& text_body) const {
  const json body = parse_body(text_body, max_body_bytes_);
  Fields f(body);
  GenerationRequest r;
  r.params = defaults_;
  r.params.logprobs = -1;  // this API has no log-probabilities
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
  r.prompt_ids = text ? encode(tokenizer_, *text, field)
                      : prompt_ids_from(*ids, field, config_.vocab_size);
  check_prompt(r.prompt_ids, field, max_prompt_tokens_, config_);
  check_query(r, config_);
  return r;
}

CompletionQuery HttpApi::parse_completion(const std::string& text_body) const {
  const json body = parse_body(text_body, max_body_bytes_);
  Fields f(body);

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
  if (!tokenizer_)
    throw HttpError{400, "/v1/completions returns text and needs a tokenizer, and the model config "
                         "has none (no tokenizer section); use POST /generate with \"prompt_ids\"",
                    "no_tokenizer", "prompt"};
  CompletionQuery c;
  c.model = model_name_;
  if (const auto m = f.string("model")) c.model = *m;
  const int64_t max_tokens = f.integer("max_tokens", 0).value_or(16);
  const auto temperature = f.number("temperature", 0, 2);
  const auto top_p = f.number("top_p", 0, 1);
  const auto top_k = f.integer("top_k", 0);
  const auto seed = f.unsigned_integer("seed");
  const auto min_tokens = f.integer("min_tokens", 0);
  c.n = static_cast<int>(f.integer("n", 1, kMaxCompletionChoices).value_or(1));
  c.best_of = static_cast<int>(f.integer("best_of", 1, kMaxCompletionChoices).value_or(c.n));
  if (c.best_of < c.n)
    throw HttpError{400, "\"best_of\" (" + std::to_string(c.best_of) + ") must be at least \"n\" (" +
                             std::to_string(c.n) + ")",
                    "invalid_value", "best_of"};
  c.stream = f.boolean("stream").value_or(false);
  if (c.stream && c.best_of > c.n)
    throw HttpError{400, "\"best_of\" above \"n\" cannot be streamed: the choices are known only once "
                         "every candidate has ended",
                    "invalid_value", "best_of"};
  const bool echo = f.boolean("echo").value_or(false);
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object() || (so->contains("include_usage") && !(*so)["include_usage"].is_boolean()))
      throw HttpError{400, "\"stream_options\" must be {\"include_usage\": true|false}", "invalid_type",
                      "stream_options"};
    c.include_usage = so->value("include_usage", false);
  }
  f.string("user");
  if (const json* stop = f.get("stop")) {
    const auto bad = [&](const std::string& why) {
      return HttpError{400, "\"stop\" " + why + ", got " + dump(*stop), "invalid_value", "stop"};
    };
    const json list = stop->is_string() ? json::array({*stop}) : *stop;
    if (!list.is_array()) throw bad("must be a string or a list of strings");
    if (list.size() > 4) throw bad("holds at most 4 sequences");
    for (const json& one : list) {
      if (!one.is_string()) throw bad("must be a string or a list of strings");
      if (one.get<std::string>().empty()) throw bad("sequences must not be empty");
      c.stop.sequences.push_back(one.get<std::string>());
    }
  }
  const auto logprobs = f.integer("logprobs", 0, kMaxLogprobs);
  if (logprobs && echo)
    throw HttpError{400,
                    "\"logprobs\" with \"echo\" is not supported: a GLM prompt is bidirectional "
                    "context, so its tokens have no left-to-right log-probabilities",
                    "unsupported_parameter", "logprobs"};
  // suffix: the completion goes between the prompt and it — GLM's own blank infilling, the
  // prompt becomes prompt [MASK] suffix (so the prompt itself must hold no mask token).
  const std::string suffix = f.string("suffix").value_or("");
  const auto presence = f.number("presence_penalty", -2, 2);
  const auto frequency = f.number("frequency_penalty", -2, 2);
  std::vector<std::pair<int32_t, double>> logit_bias;
  if (const json* lb = f.get("logit_bias")) logit_bias = parse_logit_bias(*lb, config_.vocab_size);
  f.reject_unknown();

  GenerationRequest& r = c.request;
  r.prompt_ids = one.is_string() ? encode(tokenizer_, one.get<std::string>(), "prompt")
                                 : prompt_ids_from(one, "prompt", config_.vocab_size);
  const std::vector<int32_t> prompt_only = r.prompt_ids;
  if (!suffix.empty()) {
    const TokenIds& t = config_.tokens;
    for (int32_t id : r.prompt_ids)
      if (id == t.mask || id == t.smask || id == t.gmask)
        throw HttpError{400, "\"suffix\" with a mask token in \"prompt\": the completion goes "
                             "between the prompt and the suffix, so the prompt must hold no [MASK], "
                             "[sMASK] or [gMASK]",
                        "invalid_value", "suffix"};
    r.prompt_ids.push_back(t.mask);
    const std::vector<int32_t> tail = encode(tokenizer_, suffix, "suffix");
    for (int32_t id : tail)
      if (id == t.mask || id == t.smask || id == t.gmask)
        throw HttpError{400, "\"suffix\" holds a mask token ([MASK], [sMASK] or [gMASK]): the "
                             "completion has one place, between the prompt and the suffix",
                        "invalid_value", "suffix"};
    r.prompt_ids.insert(r.prompt_ids.end(), tail.begin(), tail.end());
  }
  check_prompt(r.prompt_ids, "prompt", max_prompt_tokens_, config_);
  // Sampling with the server's defaults (its beam search default becomes sampling: OpenAI's API
  // has no beams); any sampling knob in the request selects sampling, temperature 0 greedy.
  GenerationParams& p = r.params;
  p = defaults_;
  if (p.strategy == Strategy::Beam || temperature || top_p || top_k) p.strategy = Strategy::Sample;
  if (temperature) {
    if (*temperature == 0) p.strategy = Strategy::Greedy;
    else p.temperature = *temperature;
  }
  if (top_p) p.top_p = *top_p;
  if (top_k) p.top_k = *top_k;
  if (seed) p.seed = *seed;
  if (min_tokens) p.min_gen_length = *min_tokens;
  if (presence) p.presence_penalty = *presence;
  if (frequency) p.frequency_penalty = *frequency;
  p.logit_bias = std::move(logit_bias);
  c.show_logprobs = logprobs.has_value();
  p.logprobs = logprobs ? *logprobs : c.best_of > c.n ? 0 : -1;  // ranking needs them
  p.out_seq_length = completion_out_seq_length(r.prompt_ids, max_tokens, config_);
  check_query(r, config_);

  if (echo) c.echo_text = tokenizer_->decode(prompt_only);  // the prompt, not [MASK] + suffix
  return c;
}

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

// ---- Responses ----------------------------------------------------------------------------------

std::string HttpApi::generate_response(const GenerationResult& result) const {
  json out = json::object();
  if (tokenizer_) out["text"] = json::array({tokenizer_->decode(result.output_ids)});
  out["output_ids"] = result.output_ids;
  out["spans"] = result.spans;
  return dump(out);
}

std::string HttpApi::models_response() const {
  return dump({{"object", "list"},
               {"data", json::array({{{"id", model_name_},
                                      {"object", "model"},
                                      {"created", 0},
                                      {"owned_by", "glmrt"}}})}});
}

std::string health_response(size_t queued, int64_t active) {
  return dump({{"status", "ok"}, {"queued", queued}, {"active", active}});
}

std::string completion_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  char buf[40];
  std::snprintf(buf, sizeof buf, "cmpl-%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffu));
  return buf;
}

std::string finish_reason(const GenerationResult& result) {
  return result.finish_reason.empty() ? "stop" : result.finish_reason;
}

std::string completion_chunk(const CompletionMeta& meta, int index, const std::string& text,
                             const std::optional<std::string>& finish_reason,
                             const CompletionLogprobs* logprobs) {
  return dump(completion_json(
      meta, json::array({choice_json(index, text, finish_reason ? json(*finish_reason) : json(nullptr),
                                     logprobs)})));
}

size_t utf8_length(const std::string& text) {
  size_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

namespace {
// What `id` adds to the decoded text of `before`, as a stream would send it: the growth of the
// decoded text's complete characters (utf8_stable_prefix), so that a token holding only part of
// a character adds "" and the token completing it the whole character, and the texts of a blank's
// tokens add up to its text. At most the last 16 tokens of `before` are decoded with it: enough
// for sentencepiece's spaces and multi-token characters, and bounded per token.
std::string added_text(const Tokenizer& tok, const std::vector<int32_t>& before, int32_t id) {
  const auto stable = [](std::string t) {
    t.resize(utf8_stable_prefix(t));
    return t;
  };
  const size_t from = before.size() > 16 ? before.size() - 16 : 0;
  std::vector<int32_t> window(before.begin() + static_cast<std::ptrdiff_t>(from), before.end());
  const std::string base = stable(tok.decode(window));
  window.push_back(id);
  const std::string full = stable(tok.decode(window));
  if (full.size() >= base.size() && full.compare(0, base.size(), base) == 0) return full.substr(base.size());
  return stable(tok.decode({id}));
}
}  // namespace

LogprobEntry logprob_entry(const Tokenizer& tokenizer, const std::vector<int32_t>& before,
                           const TokenLogprobs& lp) {
  LogprobEntry e;
  e.text = added_text(tokenizer, before, lp.token);
  e.logprob = lp.logprob;
  for (const auto& [id, value] : lp.top) e.top.emplace_back(added_text(tokenizer, before, id), value);
  return e;
}

std::string completion_response(const CompletionMeta& meta,
                                const std::vector<CompletionChoice>& choices,
                                int64_t prompt_tokens, int64_t completion_tokens) {
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i)
    list.push_back(choice_json(static_cast<int>(i), choices[i].text, choices[i].finish_reason,
                               choices[i].logprobs ? &*choices[i].logprobs : nullptr));
  json out = completion_json(meta, std::move(list));
  out["usage"] = usage_json(prompt_tokens, completion_tokens);
  return dump(out);
}

std::string usage_chunk(const CompletionMeta& meta, int64_t prompt_tokens,
                        int64_t completion_tokens) {
  json usage = completion_json(meta, json::array());
  usage["usage"] = usage_json(prompt_tokens, completion_tokens);
  return dump(usage);
}

size_t StopSequences::find(const std::string& text) const {
  size_t best = std::string::npos;
  for (const std::string& s : sequences) best = std::min(best, text.find(s));
  return best;
}

size_t StopSequences::sendable(const std::string& text) const {
  size_t keep = 0;  // the longest tail of `text` that is a proper prefix of a sequence
  for (const std::string& s : sequences)
    for (size_t n = std::min(s.size() - 1, text.size()); n > keep; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  return text.size() - keep;
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

}  // namespace glmrt
