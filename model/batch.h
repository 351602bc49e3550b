// A batch of token rows with their positions and the GLM attention mask described by numbers:
// per row a list of segments (packed sub-sequences) and a `sep` per segment. Tokens before `sep`
// (within their segment) attend bidirectionally within the segment, the rest causally; segments
// never see each other. No s×s matrix is ever built.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "model/glm_config.h"

namespace glmrt {

// Host-side description, as read from JSON (`glmrt forward --input`, sample files).
struct BatchRows {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> position_ids;
  std::vector<std::vector<int32_t>> sep;              // one entry per segment
  std::vector<std::vector<int32_t>> segment_lengths;  // empty = one segment per row
};

struct Batch {
  int64_t batch = 0, seq = 0;
  Tensor tokens;        // I32 [batch * seq]
  Tensor position_ids;  // I32 [batch * seq]
  Tensor mask_spans;    // I32 [batch * seq, 3]: {segment start, sep, segment end} within the row

  Batch to(Device device) const;
};

// Validates `rows` against `config` and builds the batch. Throws InputError naming `source`, the
// row and the offending value: ragged rows, token id >= vocab_size, position >= max positions,
// sep or segment lengths out of range.
Batch build_batch(const BatchRows& rows, const GlmConfig& config, const std::string& source);

// Parses the JSON input of `glmrt forward`: {"tokens": [[…]], "position_ids": [[…]],
// "sep": [[…]], "segment_lengths": [[…]]} (segment_lengths optional). Unknown keys are errors.
BatchRows parse_batch_json(const std::string& text, const std::string& source);
BatchRows read_batch_json_file(const std::string& path);

}  // namespace glmrt
