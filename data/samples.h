// Pre-built training samples, one JSON object per line:
//   {"tokens": […], "targets": […], "loss_mask": […], "position_ids": […], "sep": […],
//    "segment_lengths": […]}        (segment_lengths optional; one sep per segment)
// the format `glmrt data-sample` prints and `data.samples` reads.
#pragma once

#include <string>
#include <vector>

#include "model/batch.h"
#include "model/glm_config.h"

namespace glmrt {

struct Sample {
  std::vector<int32_t> tokens, targets, position_ids, sep, segment_lengths;
  std::vector<float> loss_mask;
};

// Parses and validates one sample against `config`; `where` names it in errors ("f.jsonl:3").
Sample parse_sample_json(const std::string& line, const GlmConfig& config, const std::string& where);

// Reads every sample of a JSON-lines file (blank lines skipped). All samples must have the same
// length and at least one token with a loss. Throws InputError naming file and line.
std::vector<Sample> read_samples_file(const std::string& path, const GlmConfig& config);

// A micro-batch: the rows of `samples` as a batch plus the loss inputs.
struct MicroBatch {
  Batch batch;
  Tensor targets;    // I32 [rows * seq]
  Tensor loss_mask;  // F32 [rows * seq]
};
MicroBatch make_micro_batch(const std::vector<const Sample*>& samples, const GlmConfig& config);

}  // namespace glmrt
