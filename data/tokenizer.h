// The text tokenizer: a sentencepiece model (libsentencepiece) plus the GLM special tokens with the
// ids the config names (GLM130B.md §4).
//
// Ids below sp_vocab_size() are sentencepiece pieces. MASK, gMASK, sMASK, eod, sop and eop must
// lie at or above it (a small model appends them after the sentencepiece vocabulary, as GLM-130B
// appends them after icetk's 150,000 pieces) and below the model's vocab_size; eos and pad may be
// sentencepiece's own ids (its </s> is eos, as icetk's is) or appended ones.
//
// encode() maps the literal strings "[MASK]", "[gMASK]", "[sMASK]", "<|endoftext|>" (eod),
// "<|startofpiece|>" (sop) and "<|endofpiece|>" (eop) in the text to the special ids and encodes
// the text between them with sentencepiece; decode() renders those ids back to the same strings,
// so text round-trips. Models trained by `glmrt train-tokenizer` (identity normalisation, no
// whitespace folding, no dummy prefix, byte fallback, "\n" a piece of its own) reproduce any UTF-8
// text exactly: newlines, runs of spaces, Chinese, emoji.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/glm_config.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace glmrt {

class Tokenizer {
 public:
  // Loads the sentencepiece model at `model_path` and checks the special ids of `config` against
  // it. Throws ConfigError naming the key (tokenizer.model, model.vocab_size, tokens.<name>);
  // `source` (the config file) prefixes the messages when given.
  Tokenizer(const std::string& model_path, const GlmConfig& config, const std::string& source = "");
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text → ids. Thread-safe (const). Throws InputError if sentencepiece rejects the text.
  std::vector<int32_t> encode(std::string_view text) const;
  // Ids → text. Special ids render as their literal strings; pad, an eos above the sentencepiece
  // vocabulary and unused ids in [sp_vocab_size, vocab_size) render as nothing (sentencepiece's
  // own control pieces such as </s> too). Throws InputError for an id outside [0, vocab_size).
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t sp_vocab_size() const { return sp_vocab_size_; }
  int64_t vocab_size() const { return vocab_size_; }  // the model's (config's) vocab_size
  const TokenIds& ids() const { return ids_; }
  // The piece of a sentencepiece id, or the literal string of a special id (for diagnostics).
  std::string piece(int32_t id) const;
  const std::string& model_path() const { return model_path_; }

  // The literal strings of the six GLM special tokens, in the order MASK, gMASK, sMASK, eod,
  // sop, eop.
  static const std::vector<std::string>& special_strings();

 private:
  std::string model_path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int64_t sp_vocab_size_ = 0, vocab_size_ = 0;
  TokenIds ids_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // literal string → id
  std::unordered_map<int32_t, std::string> special_text_;  // id ≥ sp_vocab_size → rendering

  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
};

// ---- Text corpora ------------------------------------------------------------------------------
// What `glmrt preprocess` and `glmrt train-tokenizer` read: plain text with one document per
// blank-line-separated block (`text`), one document per line (`lines`), or JSON lines with a
// string field "text" per document (`jsonl`). `auto` picks jsonl for .jsonl/.json files and text
// otherwise. Lines lose a trailing "\r"; a document's lines are joined with "\n"; empty and
// whitespace-only documents are skipped.
enum class TextFormat { Auto, Text, Lines, Jsonl };
// "auto", "text", "lines" or "jsonl"; throws ConfigError naming `option` otherwise.
TextFormat parse_text_format(const std::string& name, const std::string& option = "--format");
const char* text_format_name(TextFormat f);
// The format of `path` under `requested` (resolves Auto by extension).
TextFormat resolve_text_format(TextFormat requested, const std::string& path);

// Checks that every path is a readable regular file; returns their total size in bytes. Throws
// InputError naming the first that is not.
uint64_t check_readable_files(const std::vector<std::string>& paths);

// The documents of one file, in order.
class DocumentReader {
 public:
  DocumentReader(const std::string& path, TextFormat format);  // throws InputError
  ~DocumentReader();
  DocumentReader(const DocumentReader&) = delete;
  DocumentReader& operator=(const DocumentReader&) = delete;

  // The next non-empty document; false at the end of the file. Throws InputError naming
  // path:line for a malformed JSON line or a read error.
  bool next(std::string& document);
  uint64_t bytes_read() const { return bytes_; }
  uint64_t skipped_empty() const { return skipped_; }
  const std::string& path() const { return path_; }

 private:
  bool read_line(std::string_view& line);

  std::string path_;
  TextFormat format_;
  std::FILE* file_ = nullptr;
  char* buf_ = nullptr;
  size_t cap_ = 0;
  uint64_t line_ = 0, bytes_ = 0, skipped_ = 0;
};

}  // namespace glmrt
