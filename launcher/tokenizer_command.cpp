// glmrt train-tokenizer: trains a sentencepiece model (unigram or BPE) on text corpora with the
// options that make text round-trip exactly (data/tokenizer.h): identity normalisation, spaces
// kept as they are, no dummy prefix, byte fallback, digits split, "\n" a piece of its own.
#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <thread>
#include <unordered_map>

#include "checkpoint/safetensors.h"  // fsync_directory_of
#include "data/tokenizer.h"
#include "launcher/options.h"

namespace glmrt {

namespace {

// Feeds the trainer the non-blank lines of every document of every input, in order. An input
// error stops the iteration; its message is kept for the caller (sentencepiece only sees a
// failed status).
class CorpusLines : public sentencepiece::SentenceIterator {
 public:
  CorpusLines(const std::vector<std::string>& paths, TextFormat format)
      : paths_(paths), format_(format) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override {
    if (error_.empty()) return sentencepiece::util::Status();
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kInvalidArgument, error_);
  }
  void Next() override {
    try {
      advance();
    } catch (const std::exception& e) {
      error_ = e.what();
      done_ = true;
    }
  }
  const std::string& error() const { return error_; }
  uint64_t lines() const { return count_; }

 private:
  void advance() {
    while (pending_.empty()) {
      if (!reader_) {
        if (next_file_ == paths_.size()) {
          done_ = true;
          return;
        }
        reader_ = std::make_unique<DocumentReader>(paths_[next_file_++], format_);
      }
      if (!reader_->next(doc_)) {
        reader_.reset();
        continue;
      }
      for (size_t start = 0; start <= doc_.size();) {
        size_t end = doc_.find('\n', start);
        if (end == std::string::npos) end = doc_.size();
        if (doc_.find_first_not_of(" \t\r\f\v", start) < end)
          pending_.emplace_back(doc_.substr(start, end - start));
        start = end + 1;
      }
    }
    line_ = std::move(pending_.front());
    pending_.pop_front();
    ++count_;
  }

  std::vector<std::string> paths_;
  TextFormat format_;
  size_t next_file_ = 0;
  std::unique_ptr<DocumentReader> reader_;
  std::string doc_, line_, error_;
  std::deque<std::string> pending_;
  bool done_ = false;
  uint64_t count_ = 0;
};

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw InputError(path + ": cannot create: " + std::strerror(errno));
  const char* p = bytes.data();
  size_t n = bytes.size();
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw InputError(path + ": write failed: " + std::strerror(err));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw InputError(path + ": fsync failed: " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw InputError(path + ": cannot rename into place: " + std::strerror(err));
  }
  fsync_directory_of(path);
}

}  // namespace

int run_train_tokenizer(const Args& args) {
  po::options_description desc("glmrt train-tokenizer");
  desc.add_options()
    ("input", po::value<std::vector<std::string>>()->multitoken()->required(),
     "training text files (one or more); every non-blank line is a sentence")
    ("vocab-size", po::value<int>()->required(),
     "sentencepiece pieces (byte pieces included); the GLM special tokens go after them")
    ("output", po::value<std::string>()->required(), "the model file to write (PATH.model)")
    ("max-sentences", po::value<int64_t>()->default_value(200000),
     "train on a random sample of at most this many sentences")
    ("model-type", po::value<std::string>()->default_value("unigram"), "unigram or bpe")
    ("character-coverage", po::value<double>()->default_value(0.9995, "0.9995"),
     "share of characters with pieces of their own; rarer ones fall back to bytes")
    ("format", po::value<std::string>()->default_value("auto"),
     "input format: auto, text, lines or jsonl (as glmrt preprocess)")
    ("seed", po::value<unsigned>()->default_value(1234), "seed of the sentence sampling")
    ("threads", po::value<int>(), "training threads (default: the machine's cores, at most 16)")
    ("verbose", "print sentencepiece's training log");
  po::variables_map vm;
  if (!parse_options("train-tokenizer", desc, args, vm)) return 0;

  const std::vector<std::string> inputs = vm["input"].as<std::vector<std::string>>();
  const std::string output = vm["output"].as<std::string>();
  const int vocab = vm["vocab-size"].as<int>();
  const int64_t max_sentences = vm["max-sentences"].as<int64_t>();
  const std::string type = vm["model-type"].as<std::string>();
  const double coverage = vm["character-coverage"].as<double>();
  const TextFormat format = parse_text_format(vm["format"].as<std::string>());
  if (vocab < 1) throw ConfigError("--vocab-size: must be positive, got " + std::to_string(vocab));
  if (max_sentences <= 100)
    throw ConfigError("--max-sentences: sentencepiece needs more than 100, got " +
                      std::to_string(max_sentences));
  if (type != "unigram" && type != "bpe")
    throw ConfigError("--model-type: expected unigram or bpe, got '" + type + "'");
  if (!(coverage > 0 && coverage <= 1))
    throw ConfigError("--character-coverage: must be in (0, 1], got " + std::to_string(coverage));
  int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));
  if (vm.count("threads")) {
    threads = vm["threads"].as<int>();
    if (threads < 1) throw ConfigError("--threads: must be at least 1, got " + std::to_string(threads));
  }
  check_readable_files(inputs);
  {
    const std::filesystem::path dir = std::filesystem::path(output).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::is_directory(dir, ec))
      throw InputError(output + ": the directory " + dir.string() + " does not exist");
  }

  // The model comes back serialized (no model_prefix: sentencepiece writes no files); it is
  // written to `output` atomically once it loads.
  const std::unordered_map<std::string, std::string> spec = {
      {"model_type", type},
      {"vocab_size", std::to_string(vocab)},
      {"character_coverage", std::to_string(coverage)},
      {"input_sentence_size", std::to_string(max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"user_defined_symbols", "\n"},
      {"num_threads", std::to_string(threads)},
      {"minloglevel", vm.count("verbose") ? "0" : "2"},
  };
  sentencepiece::SetRandomGeneratorSeed(vm["seed"].as<unsigned>());
  const auto start = std::chrono::steady_clock::now();
  CorpusLines lines(inputs, format);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(spec, &lines, &model);
  if (!lines.error().empty()) throw InputError(lines.error());
  if (!status.ok())
    throw InputError("sentencepiece training failed on " + std::to_string(lines.lines()) +
                     " sentences: " + status.ToString());
  sentencepiece::SentencePieceProcessor sp;
  if (const auto s = sp.LoadFromSerializedProto(model); !s.ok())
    throw InternalError("the trained sentencepiece model does not load: " + s.ToString());
  write_file_atomically(output, model);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const int n = sp.GetPieceSize();
  int bytes = 0;
  for (int i = 0; i < n; ++i) bytes += sp.IsByte(i) ? 1 : 0;
  std::fprintf(stderr,
               "glmrt train-tokenizer: %s model, %d pieces (%d byte pieces, unk %d, eos %d) from "
               "%llu of %llu sentences in %.2f s -> %s\n"
               "  for a config: tokenizer: {model: %s}\n"
               "                tokens: {MASK: %d, gMASK: %d, sMASK: %d, eod: %d, sop: %d, eop: %d, "
               "eos: %d, pad: %d} with model.vocab_size >= %d\n",
               type.c_str(), n, bytes, sp.unk_id(), sp.eos_id(),
               static_cast<unsigned long long>(std::min<uint64_t>(lines.lines(), max_sentences)),
               static_cast<unsigned long long>(lines.lines()), seconds, output.c_str(),
               output.c_str(), n, n + 1, n + 2, n + 3, n + 4, n + 5, sp.eos_id(), sp.unk_id(),
               n + 6);
  return 0;
}

}  // namespace glmrt
