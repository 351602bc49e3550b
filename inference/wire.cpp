#include "inference/wire.h"

#include <cstring>

#include "kernels/half.h"

namespace glmrt::wire {

void put_double(std::vector<int64_t>& v, double x) {
  int64_t bits;
  std::memcpy(&bits, &x, 8);
  v.push_back(bits);
}
double get_double(int64_t bits) {
  double x;
  std::memcpy(&x, &bits, 8);
  return x;
}
int32_t fp32_bits(float x) { return static_cast<int32_t>(float_bits(x)); }
float fp32_from_bits(int32_t bits) { return bits_float(static_cast<uint32_t>(bits)); }

void put_params(std::vector<int64_t>& v, const GenerationParams& p) {
  v.push_back(static_cast<int64_t>(p.strategy));
  v.push_back(p.out_seq_length);
  v.push_back(p.min_gen_length);
  put_double(v, p.temperature);
  v.push_back(p.top_k);
  put_double(v, p.top_p);
  v.push_back(static_cast<int64_t>(p.seed));
  v.push_back(p.num_beams);
  put_double(v, p.length_penalty);
  v.push_back(p.no_repeat_ngram_size);
  v.push_back(p.deterministic ? 1 : 0);
  put_double(v, p.presence_penalty);
  put_double(v, p.frequency_penalty);
  v.push_back(p.logprobs);
  v.push_back(static_cast<int64_t>(p.logit_bias.size()));
  for (const auto& [token, bias] : p.logit_bias) {
    v.push_back(token);
    put_double(v, bias);
  }
}
GenerationParams get_params(const int64_t*& q) {
  GenerationParams p;
  p.strategy = static_cast<Strategy>(*q++);
  p.out_seq_length = *q++;
  p.min_gen_length = *q++;
  p.temperature = get_double(*q++);
  p.top_k = *q++;
  p.top_p = get_double(*q++);
  p.seed = static_cast<uint64_t>(*q++);
  p.num_beams = *q++;
  p.length_penalty = get_double(*q++);
  p.no_repeat_ngram_size = *q++;
  p.deterministic = *q++ != 0;
  p.presence_penalty = get_double(*q++);
  p.frequency_penalty = get_double(*q++);
  p.logprobs = *q++;
  p.logit_bias.resize(static_cast<size_t>(*q++));
  for (auto& [token, bias] : p.logit_bias) {
    token = static_cast<int32_t>(*q++);
    bias = get_double(*q++);
  }
  return p;
}

void put_ints(std::vector<int64_t>& v, const std::vector<int32_t>& ids) {
  v.push_back(static_cast<int64_t>(ids.size()));
  v.insert(v.end(), ids.begin(), ids.end());
}
std::vector<int32_t> get_ints(const int64_t*& q) {
  const int64_t n = *q++;
  std::vector<int32_t> ids(q, q + n);
  q += n;
  return ids;
}
void put_string(std::vector<int64_t>& v, const std::string& s) {
  v.push_back(static_cast<int64_t>(s.size()));
  for (const char c : s) v.push_back(static_cast<unsigned char>(c));
}
std::string get_string(const int64_t*& q) {
  const int64_t n = *q++;
  std::string s;
  for (int64_t i = 0; i < n; ++i) s += static_cast<char>(*q++);
  return s;
}
void put_logprobs(std::vector<int64_t>& v, const TokenLogprobs& lp) {
  v.insert(v.end(), {lp.token, fp32_bits(lp.logprob), static_cast<int64_t>(lp.top.size())});
  for (const auto& [id, value] : lp.top) v.insert(v.end(), {id, fp32_bits(value)});
}
TokenLogprobs get_logprobs(const int64_t*& q) {
  TokenLogprobs lp;
  lp.token = static_cast<int32_t>(*q++);
  lp.logprob = fp32_from_bits(static_cast<int32_t>(*q++));
  lp.top.resize(static_cast<size_t>(*q++));
  for (auto& [id, value] : lp.top) {
    id = static_cast<int32_t>(*q++);
    value = fp32_from_bits(static_cast<int32_t>(*q++));
  }
  return lp;
}
void put_result(std::vector<int64_t>& v, const GenerationResult& r) {
  put_string(v, r.error);
  put_ints(v, r.output_ids);
  v.push_back(static_cast<int64_t>(r.spans.size()));
  for (const auto& span : r.spans) put_ints(v, span);
  v.push_back(r.generated_tokens);
  put_string(v, r.finish_reason);
  v.push_back(static_cast<int64_t>(r.logprobs.size()));
  for (const TokenLogprobs& lp : r.logprobs) put_logprobs(v, lp);
}
GenerationResult get_result(const int64_t*& q) {
  GenerationResult r;
  r.error = get_string(q);
  r.output_ids = get_ints(q);
  r.spans.resize(static_cast<size_t>(*q++));
  for (auto& span : r.spans) span = get_ints(q);
  r.generated_tokens = *q++;
  r.finish_reason = get_string(q);
  r.logprobs.resize(static_cast<size_t>(*q++));
  for (TokenLogprobs& lp : r.logprobs) lp = get_logprobs(q);
  return r;
}

}  // namespace glmrt::wire
