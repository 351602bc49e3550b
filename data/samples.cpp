#include "data/samples.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace glmrt {

namespace {
std::vector<int32_t> int_list(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.is_array()) throw InputError(where + ": \"" + key + "\" must be a list of integers");
  std::vector<int32_t> out;
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_number_integer() || j[i].get<int64_t>() < INT32_MIN || j[i].get<int64_t>() > INT32_MAX)
      throw InputError(where + ": \"" + key + "\" entry " + std::to_string(i) + ": " +
                       j[i].dump() + " is not a 32-bit integer");
    out.push_back(static_cast<int32_t>(j[i].get<int64_t>()));
  }
  return out;
}
}  // namespace

Sample parse_sample_json(const std::string& line, const GlmConfig& config, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(where + ": malformed JSON: " + e.what());
  }
  if (!j.is_object()) throw InputError(where + ": expected a JSON object");
  static const char* kKeys[] = {"tokens", "targets", "loss_mask", "position_ids", "sep",
                                "segment_lengths", "mode"};
  for (const auto& [key, value] : j.items())
    if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys))
      throw InputError(where + ": unknown key \"" + key + "\"");
  for (const char* key : {"tokens", "targets", "loss_mask", "position_ids", "sep"})
    if (!j.contains(key)) throw InputError(where + ": missing key \"" + key + "\"");
  Sample s;
  s.tokens = int_list(j["tokens"], "tokens", where);
  s.targets = int_list(j["targets"], "targets", where);
  s.position_ids = int_list(j["position_ids"], "position_ids", where);
  s.sep = int_list(j["sep"], "sep", where);
  if (j.contains("segment_lengths")) s.segment_lengths = int_list(j["segment_lengths"], "segment_lengths", where);
  const auto& lm = j["loss_mask"];
  if (!lm.is_array()) throw InputError(where + ": \"loss_mask\" must be a list of numbers");
  double mask_sum = 0;
  for (size_t i = 0; i < lm.size(); ++i) {
    if (!lm[i].is_number() || lm[i].get<double>() < 0)
      throw InputError(where + ": \"loss_mask\" entry " + std::to_string(i) + ": " + lm[i].dump() +
                       " is not a non-negative number");
    s.loss_mask.push_back(lm[i].get<float>());
    mask_sum += lm[i].get<double>();
  }
  const size_t n = s.tokens.size();
  if (s.targets.size() != n || s.loss_mask.size() != n)
    throw InputError(where + ": \"targets\" (" + std::to_string(s.targets.size()) + ") and \"loss_mask\" (" +
                     std::to_string(s.loss_mask.size()) + ") must have one entry per token (" +
                     std::to_string(n) + ")");
  for (size_t i = 0; i < n; ++i)
    if (s.targets[i] < 0 || s.targets[i] >= config.vocab_size)
      throw InputError(where + ": target " + std::to_string(i) + ": id " + std::to_string(s.targets[i]) +
                       " outside the vocabulary [0, " + std::to_string(config.vocab_size) + ")");
  if (mask_sum <= 0) throw InputError(where + ": \"loss_mask\" selects no token");
  // Tokens, positions and the mask are validated by the batch builder.
  BatchRows rows{{s.tokens}, {s.position_ids}, {s.sep}, {}};
  if (!s.segment_lengths.empty()) rows.segment_lengths = {s.segment_lengths};
  build_batch(rows, config, where);
  return s;
}

std::vector<Sample> read_samples_file(const std::string& path, const GlmConfig& config) {
  std::ifstream in(path);
  if (!in || std::filesystem::is_directory(path)) throw InputError(path + ": cannot open samples file");
  std::vector<Sample> samples;
  std::string line;
  for (int64_t no = 1; std::getline(in, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(no);
    samples.push_back(parse_sample_json(line, config, where));
    if (samples.back().tokens.size() != samples.front().tokens.size())
      throw InputError(where + ": sample of " + std::to_string(samples.back().tokens.size()) +
                       " tokens; the first sample has " + std::to_string(samples.front().tokens.size()) +
                       " (all samples must have the same length)");
  }
  if (samples.empty()) throw InputError(path + ": no samples");
  return samples;
}

MicroBatch make_micro_batch(const std::vector<const Sample*>& samples, const GlmConfig& config) {
  BatchRows rows;
  bool any_segments = false;
  for (const Sample* s : samples) any_segments |= !s->segment_lengths.empty();
  std::vector<int32_t> targets;
  std::vector<float> mask;
  for (const Sample* s : samples) {
    rows.tokens.push_back(s->tokens);
    rows.position_ids.push_back(s->position_ids);
    rows.sep.push_back(s->sep);
    if (any_segments)
      rows.segment_lengths.push_back(s->segment_lengths.empty()
                                         ? std::vector<int32_t>{static_cast<int32_t>(s->tokens.size())}
                                         : s->segment_lengths);
    targets.insert(targets.end(), s->targets.begin(), s->targets.end());
    mask.insert(mask.end(), s->loss_mask.begin(), s->loss_mask.end());
  }
  MicroBatch mb;
  mb.batch = build_batch(rows, config, "micro-batch");
  const int64_t n = static_cast<int64_t>(targets.size());
  mb.targets = Tensor::from_ints(targets, {n});
  mb.loss_mask = Tensor::from_floats(mask, {n});
  return mb;
}

}  // namespace glmrt
