#include "model/batch.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace glmrt {

Batch Batch::to(Device device) const {
  return {batch, seq, tokens.to(device), position_ids.to(device), mask_spans.to(device)};
}

namespace {
std::string at_row(const std::string& source, size_t b) {
  return source + ": row " + std::to_string(b);
}
}  // namespace

Batch build_batch(const BatchRows& rows, const GlmConfig& config, const std::string& source) {
  const size_t batch = rows.tokens.size();
  if (batch == 0) throw InputError(source + ": \"tokens\" holds no rows");
  const size_t seq = rows.tokens[0].size();
  if (seq == 0) throw InputError(source + ": row 0 of \"tokens\" is empty");
  if (static_cast<int64_t>(seq) > config.max_sequence_length)
    throw InputError(source + ": rows of " + std::to_string(seq) +
                     " tokens exceed max_sequence_length " +
                     std::to_string(config.max_sequence_length));
  auto check_rows = [&](const std::vector<std::vector<int32_t>>& field, const char* name,
                        bool per_token) {
    if (field.size() != batch)
      throw InputError(source + ": \"" + name + "\" has " + std::to_string(field.size()) +
                       " rows, \"tokens\" has " + std::to_string(batch));
    if (!per_token) return;
    for (size_t b = 0; b < batch; ++b)
      if (field[b].size() != seq)
        throw InputError(at_row(source, b) + " of \"" + name + "\" has " +
                         std::to_string(field[b].size()) + " entries, expected " +
                         std::to_string(seq) + " (rows must have equal length)");
  };
  check_rows(rows.tokens, "tokens", true);
  check_rows(rows.position_ids, "position_ids", true);
  check_rows(rows.sep, "sep", false);
  const bool has_segments = !rows.segment_lengths.empty();
  if (has_segments) check_rows(rows.segment_lengths, "segment_lengths", false);

  const int64_t n = static_cast<int64_t>(batch * seq);
  Batch out{static_cast<int64_t>(batch), static_cast<int64_t>(seq), Tensor::empty({n}, DType::I32),
            Tensor::empty({n}, DType::I32), Tensor::empty({n, 3}, DType::I32)};
  int32_t* tok = out.tokens.data_as<int32_t>();
  int32_t* pos = out.position_ids.data_as<int32_t>();
  int32_t* spans = out.mask_spans.data_as<int32_t>();
  for (size_t b = 0; b < batch; ++b) {
    for (size_t t = 0; t < seq; ++t) {
      const int32_t id = rows.tokens[b][t], p = rows.position_ids[b][t];
      if (id < 0 || id >= config.vocab_size)
        throw InputError(at_row(source, b) + ", token " + std::to_string(t) + ": id " +
                         std::to_string(id) + " outside the vocabulary [0, " +
                         std::to_string(config.vocab_size) + ")");
      if (p < 0 || p >= config.max_sequence_length)
        throw InputError(at_row(source, b) + ", token " + std::to_string(t) + ": position " +
                         std::to_string(p) + " outside [0, max_sequence_length " +
                         std::to_string(config.max_sequence_length) + ")");
      tok[b * seq + t] = id;
      pos[b * seq + t] = p;
    }
    std::vector<int32_t> lengths =
        has_segments ? rows.segment_lengths[b] : std::vector<int32_t>{static_cast<int32_t>(seq)};
    if (lengths.empty())
      throw InputError(at_row(source, b) + " of \"segment_lengths\" is empty");
    if (rows.sep[b].size() != lengths.size())
      throw InputError(at_row(source, b) + ": \"sep\" has " + std::to_string(rows.sep[b].size()) +
                       " entries for " + std::to_string(lengths.size()) +
                       " segment(s); give one sep per segment");
    int64_t start = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      const int32_t len = lengths[s], sep = rows.sep[b][s];
      if (len <= 0)
        throw InputError(at_row(source, b) + ", segment " + std::to_string(s) + ": length " +
                         std::to_string(len) + " must be positive");
      if (start + len > static_cast<int64_t>(seq))
        throw InputError(at_row(source, b) + ": segment lengths exceed the row length " +
                         std::to_string(seq));
      if (sep < 0 || sep > len)
        throw InputError(at_row(source, b) + ", segment " + std::to_string(s) + ": sep " +
                         std::to_string(sep) + " outside [0, " + std::to_string(len) + "]");
      for (int64_t t = start; t < start + len; ++t) {
        int32_t* sp = spans + (static_cast<int64_t>(b * seq) + t) * 3;
        sp[0] = static_cast<int32_t>(start);
        sp[1] = static_cast<int32_t>(start + sep);
        sp[2] = static_cast<int32_t>(start + len);
      }
      start += len;
    }
    if (start != static_cast<int64_t>(seq))
      throw InputError(at_row(source, b) + ": segment lengths sum to " + std::to_string(start) +
                       ", the row has " + std::to_string(seq) + " tokens");
  }
  return out;
}

namespace {
std::vector<std::vector<int32_t>> int_rows(const nlohmann::json& j, const char* key,
                                           const std::string& source) {
  if (!j.is_array())
    throw InputError(source + ": \"" + key + "\" must be a list of rows (lists of integers)");
  std::vector<std::vector<int32_t>> rows;
  for (size_t b = 0; b < j.size(); ++b) {
    const auto& row = j[b];
    if (!row.is_array())
      throw InputError(source + ": \"" + key + "\" row " + std::to_string(b) +
                       " must be a list of integers");
    std::vector<int32_t> r;
    for (size_t t = 0; t < row.size(); ++t) {
      const auto& v = row[t];
      if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
        throw InputError(source + ": \"" + key + "\" row " + std::to_string(b) + ", entry " +
                         std::to_string(t) + ": " + v.dump() + " is not a 32-bit integer");
      r.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
    rows.push_back(std::move(r));
  }
  return rows;
}
}  // namespace

BatchRows parse_batch_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(source + ": malformed JSON: " + e.what());
  }
  if (!j.is_object()) throw InputError(source + ": expected a JSON object");
  for (const auto& [key, value] : j.items())
    if (key != "tokens" && key != "position_ids" && key != "sep" && key != "segment_lengths")
      throw InputError(source + ": unknown key \"" + key +
                       "\" (expected tokens, position_ids, sep, segment_lengths)");
  for (const char* key : {"tokens", "position_ids", "sep"})
    if (!j.contains(key)) throw InputError(source + ": missing key \"" + key + "\"");
  BatchRows rows;
  rows.tokens = int_rows(j["tokens"], "tokens", source);
  rows.position_ids = int_rows(j["position_ids"], "position_ids", source);
  rows.sep = int_rows(j["sep"], "sep", source);
  if (j.contains("segment_lengths"))
    rows.segment_lengths = int_rows(j["segment_lengths"], "segment_lengths", source);
  return rows;
}

BatchRows read_batch_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in || std::filesystem::is_directory(path))
    throw InputError(path + ": cannot open input file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_batch_json(ss.str(), path);
}

}  // namespace glmrt
