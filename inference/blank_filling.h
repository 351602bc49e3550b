// GLM blank filling (inference/SEMANTICS.md): which mask a prompt fills, the context, positions
// and attention separator of each blank, and how a generated span goes back into the text.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "model/glm_config.h"

namespace glmrt {

struct PreparedPrompt {
  std::vector<int32_t> seq;  // the prompt with gMASK / eos appended where the rules say
  int32_t mask_id = 0;       // the kind of mask this query fills
  bool gmask = false;        // positions keep counting (gMASK) or stay at the mask (MASK/sMASK)
  bool eos_appended = false;
};

// Step 1-2 of the rules: the mask kind, gMASK appended when the prompt has no mask, eos
// appended when it does not end with one.
PreparedPrompt prepare_prompt(const std::vector<int32_t>& prompt, const TokenIds& ids);

struct BlankContext {
  int64_t mask_position = 0;
  std::vector<int32_t> tokens;     // seq + [sop]
  std::vector<int32_t> positions;  // position id of every context token
  int64_t sep = 0;                 // keys < sep are seen by every token (= len(seq))
  int64_t limit = 0;               // context + generated tokens <= limit
  bool gmask = false;

  int64_t context_length() const { return static_cast<int64_t>(tokens.size()); }
  // Position id of the i-th generated token (0-based).
  int32_t generated_position(int64_t i) const {
    return static_cast<int32_t>(gmask ? context_length() + i : mask_position);
  }
};

// The next blank of `p` (its first remaining generation mask), or nullopt when all are filled.
// limit = min(out_seq_length, max_length). Throws InputError when the context (with sop) is longer
// than max_length.
std::optional<BlankContext> next_blank(const PreparedPrompt& p, int32_t sop,
                                       int64_t out_seq_length, int64_t max_length);

// Replaces the blank's mask in p.seq by `span`.
void fill_blank(PreparedPrompt& p, const BlankContext& blank, const std::vector<int32_t>& span);

// The answer: p.seq without the eos that prepare_prompt appended.
std::vector<int32_t> answer_ids(const PreparedPrompt& p, const TokenIds& ids);

}  // namespace glmrt
