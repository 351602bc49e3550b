#include "data/tokenizer.h"

#include <sentencepiece_processor.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace glmrt {

const std::vector<std::string>& Tokenizer::special_strings() {
  static const std::vector<std::string> s = {"[MASK]",          "[gMASK]",          "[sMASK]",
                                             "<|endoftext|>",   "<|startofpiece|>", "<|endofpiece|>"};
  return s;
}

Tokenizer::Tokenizer(const std::string& model_path, const GlmConfig& config, const std::string& source)
    : model_path_(model_path),
      sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()),
      vocab_size_(config.vocab_size),
      ids_(config.tokens) {
  const std::string where = source.empty() ? "" : source + ": ";
  if (model_path.empty())
    throw ConfigError(where + "tokenizer.model: no sentencepiece model is configured");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(model_path, ec))
    throw ConfigError(where + "tokenizer.model: " + model_path +
                      (std::filesystem::exists(model_path, ec) ? " is not a regular file"
                                                               : " does not exist"));
  const auto status = sp_->Load(model_path);
  if (!status.ok())
    throw ConfigError(where + "tokenizer.model: cannot load " + model_path +
                      " as a sentencepiece model: " + status.ToString());
  sp_vocab_size_ = sp_->GetPieceSize();
  if (vocab_size_ < sp_vocab_size_)
    throw ConfigError(where + "model.vocab_size: " + std::to_string(vocab_size_) +
                      " is smaller than the sentencepiece vocabulary of " + model_path + " (" +
                      std::to_string(sp_vocab_size_) + " pieces)");

  const std::vector<std::string>& text = special_strings();
  const std::pair<const char*, int32_t> six[] = {{"MASK", ids_.mask}, {"gMASK", ids_.gmask},
                                                 {"sMASK", ids_.smask}, {"eod", ids_.eod},
                                                 {"sop", ids_.sop},     {"eop", ids_.eop}};
  const std::pair<const char*, int32_t> other[] = {{"eos", ids_.eos}, {"pad", ids_.pad}};
  auto range = [&](const char* name, int32_t id) {
    if (id < 0 || id >= vocab_size_)
      throw ConfigError(where + "tokens." + name + ": id " + std::to_string(id) +
                        " outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
  };
  std::unordered_map<int32_t, std::string> owner;  // id → key, for collisions
  for (size_t i = 0; i < 6; ++i) {
    const auto& [name, id] = six[i];
    range(name, id);
    if (id < sp_vocab_size_)
      throw ConfigError(where + "tokens." + name + ": id " + std::to_string(id) +
                        " is the sentencepiece piece '" + sp_->IdToPiece(id) + "' of " + model_path +
                        "; the special tokens must come after its " +
                        std::to_string(sp_vocab_size_) + " pieces (ids >= " +
                        std::to_string(sp_vocab_size_) + ")");
    auto [it, fresh] = owner.emplace(id, name);
    if (!fresh)
      throw ConfigError(where + "tokens." + name + ": id " + std::to_string(id) +
                        " is already the id of tokens." + it->second);
    specials_.emplace_back(text[i], id);
    special_text_[id] = text[i];
  }
  for (const auto& [name, id] : other) {
    range(name, id);
    auto it = owner.find(id);
    if (it != owner.end())
      throw ConfigError(where + "tokens." + name + ": id " + std::to_string(id) +
                        " is already the id of tokens." + it->second);
    if (id >= sp_vocab_size_) special_text_.emplace(id, "");  // no text form
  }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

void Tokenizer::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok())
    throw InputError("tokenizer " + model_path_ + ": cannot encode text: " + status.ToString());
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  size_t segment = 0, pos = 0;
  while ((pos = text.find_first_of("[<", pos)) != std::string_view::npos) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    for (const auto& s : specials_)
      if (text.substr(pos).starts_with(s.first)) {
        hit = &s;
        break;
      }
    if (!hit) {
      ++pos;
      continue;
    }
    encode_plain(text.substr(segment, pos - segment), out);
    out.push_back(hit->second);
    pos += hit->first.size();
    segment = pos;
  }
  encode_plain(text.substr(segment), out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out, piece;
  std::vector<int> run;
  auto flush = [&] {
    if (run.empty()) return;
    const auto status = sp_->Decode(run, &piece);
    if (!status.ok())
      throw InputError("tokenizer " + model_path_ + ": cannot decode: " + status.ToString());
    out += piece;
    run.clear();
  };
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size_)
      throw InputError("token id " + std::to_string(id) + " outside the vocabulary [0, " +
                       std::to_string(vocab_size_) + ")");
    if (id == ids_.pad) continue;  // padding is never text (pad may be sentencepiece's <unk>)
    if (id < sp_vocab_size_) {
      run.push_back(id);
      continue;
    }
    flush();
    auto it = special_text_.find(id);
    if (it != special_text_.end()) out += it->second;  // unused padding ids render as nothing
  }
  flush();
  return out;
}

std::string Tokenizer::piece(int32_t id) const {
  if (id >= 0 && id < sp_vocab_size_) return sp_->IdToPiece(id);
  auto it = special_text_.find(id);
  if (it == special_text_.end()) return "";
  if (!it->second.empty()) return it->second;
  return id == ids_.eos ? "<eos>" : "<pad>";
}

// ---- Text corpora ------------------------------------------------------------------------------

TextFormat parse_text_format(const std::string& name, const std::string& option) {
  if (name == "auto") return TextFormat::Auto;
  if (name == "text") return TextFormat::Text;
  if (name == "lines") return TextFormat::Lines;
  if (name == "jsonl") return TextFormat::Jsonl;
  throw ConfigError(option + ": expected auto, text, lines or jsonl, got '" + name + "'");
}

const char* text_format_name(TextFormat f) {
  switch (f) {
    case TextFormat::Auto: return "auto";
    case TextFormat::Text: return "text";
    case TextFormat::Lines: return "lines";
    case TextFormat::Jsonl: return "jsonl";
  }
  return "?";
}

TextFormat resolve_text_format(TextFormat requested, const std::string& path) {
  if (requested != TextFormat::Auto) return requested;
  const std::string ext = std::filesystem::path(path).extension().string();
  return ext == ".jsonl" || ext == ".json" ? TextFormat::Jsonl : TextFormat::Text;
}

uint64_t check_readable_files(const std::vector<std::string>& paths) {
  uint64_t total = 0;
  for (const std::string& p : paths) {
    std::FILE* f = std::fopen(p.c_str(), "rb");
    if (!f) throw InputError(p + ": cannot read: " + std::strerror(errno));
    struct stat st {};
    const bool regular = ::fstat(::fileno(f), &st) == 0 && S_ISREG(st.st_mode);
    std::fclose(f);
    if (!regular) throw InputError(p + ": not a regular file");
    total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

namespace {
bool blank(std::string_view s) { return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }
}  // namespace

DocumentReader::DocumentReader(const std::string& path, TextFormat format)
    : path_(path), format_(resolve_text_format(format, path)) {
  file_ = std::fopen(path.c_str(), "rb");
  if (!file_) throw InputError(path + ": cannot read: " + std::strerror(errno));
}

DocumentReader::~DocumentReader() {
  if (file_) std::fclose(file_);
  std::free(buf_);
}

bool DocumentReader::read_line(std::string_view& line) {
  errno = 0;
  const ssize_t n = ::getline(&buf_, &cap_, file_);
  if (n < 0) {
    if (std::ferror(file_))
      throw InputError(path_ + ":" + std::to_string(line_ + 1) + ": read error: " +
                       std::strerror(errno ? errno : EIO));
    return false;
  }
  ++line_;
  bytes_ += static_cast<uint64_t>(n);
  size_t len = static_cast<size_t>(n);
  if (len > 0 && buf_[len - 1] == '\n') --len;
  if (len > 0 && buf_[len - 1] == '\r') --len;
  line = std::string_view(buf_, len);
  return true;
}

bool DocumentReader::next(std::string& document) {
  std::string_view line;
  document.clear();
  switch (format_) {
    case TextFormat::Auto:  // resolved in the constructor
    case TextFormat::Text: {
      bool any = false;
      while (read_line(line)) {
        if (blank(line)) {
          if (any) return true;
          continue;
        }
        if (any) document += '\n';
        document.append(line);
        any = true;
      }
      return any;
    }
    case TextFormat::Lines:
      while (read_line(line)) {
        if (blank(line)) {
          if (!line.empty()) ++skipped_;
          continue;
        }
        document.assign(line);
        return true;
      }
      return false;
    case TextFormat::Jsonl:
      while (read_line(line)) {
        if (blank(line)) continue;
        const std::string where = path_ + ":" + std::to_string(line_);
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::parse_error& e) {
          throw InputError(where + ": not valid JSON: " + e.what());
        }
        if (!j.is_object()) throw InputError(where + ": expected a JSON object {\"text\": ...}");
        auto it = j.find("text");
        if (it == j.end()) throw InputError(where + ": the object has no field \"text\"");
        if (!it->is_string())
          throw InputError(where + ": field \"text\" is not a string (" + it->type_name() + ")");
        document = it->get<std::string>();
        if (blank(document)) {
          ++skipped_;
          continue;
        }
        return true;
      }
      return false;
  }
  return false;
}

}  // namespace glmrt
