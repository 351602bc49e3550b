#include "inference/blank_filling.h"

#include <algorithm>

#include "kernels/error.h"

namespace glmrt {

namespace {
bool contains(const std::vector<int32_t>& v, int32_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}
}  // namespace

PreparedPrompt prepare_prompt(const std::vector<int32_t>& prompt, const TokenIds& ids) {
  PreparedPrompt p;
  p.seq = prompt;
  if (contains(prompt, ids.mask)) p.mask_id = ids.mask;
  else if (contains(prompt, ids.smask)) p.mask_id = ids.smask;
  else p.mask_id = ids.gmask;
  p.gmask = p.mask_id == ids.gmask;
  if (!contains(prompt, ids.mask) && !contains(prompt, ids.smask) && !contains(prompt, ids.gmask))
    p.seq.push_back(ids.gmask);
  const int32_t last = p.seq.back();
  if (last != ids.mask && last != ids.smask && last != ids.gmask) {
    p.seq.push_back(ids.eos);
    p.eos_appended = true;
  }
  return p;
}

std::optional<BlankContext> next_blank(const PreparedPrompt& p, int32_t sop,
                                       int64_t out_seq_length, int64_t max_length) {
  const auto it = std::find(p.seq.begin(), p.seq.end(), p.mask_id);
  if (it == p.seq.end()) return std::nullopt;
  BlankContext b;
  b.mask_position = it - p.seq.begin();
  b.tokens = p.seq;
  b.tokens.push_back(sop);
  b.sep = static_cast<int64_t>(p.seq.size());
  b.gmask = p.gmask;
  b.limit = std::min(out_seq_length, max_length);
  if (b.context_length() > max_length)
    throw InputError(detail::concat("the prompt is too long: ", b.context_length(),
                                    " tokens with the blank's sop (after filling earlier blanks), "
                                    "more than the ", max_length, " the model takes"));
  b.positions.resize(b.tokens.size());
  for (size_t i = 0; i < b.positions.size(); ++i) b.positions[i] = static_cast<int32_t>(i);
  if (!b.gmask) b.positions.back() = static_cast<int32_t>(b.mask_position);
  return b;
}

void fill_blank(PreparedPrompt& p, const BlankContext& blank, const std::vector<int32_t>& span) {
  const auto at = p.seq.begin() + blank.mask_position;
  GLMRT_CHECK(*at == p.mask_id, "fill_blank: no mask at ", blank.mask_position);
  const auto pos = p.seq.erase(at);
  p.seq.insert(pos, span.begin(), span.end());
}

std::vector<int32_t> answer_ids(const PreparedPrompt& p, const TokenIds& ids) {
  std::vector<int32_t> out = p.seq;
  if (p.eos_appended && !out.empty() && out.back() == ids.eos) out.pop_back();
  return out;
}

}  // namespace glmrt
