// glmrt preprocess: text corpora → a token file pair (PREFIX.bin / PREFIX.idx, Megatron's indexed
// dataset format), every document followed by `eod`, tokenized with the config's tokenizer.model.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <thread>

#include "data/token_file.h"
#include "data/tokenizer.h"
#include "launcher/options.h"
#include "launcher/run_config.h"

namespace glmrt {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string duration_str(double s) {
  char b[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else std::snprintf(b, sizeof b, "%ldm%02lds", t / 60, t % 60);
  return b;
}

// The progress line on a terminal (stderr), redrawn at most 5 times a second.
class Progress {
 public:
  Progress(uint64_t total_bytes) : total_(total_bytes), on_(::isatty(2) == 1), start_(Clock::now()) {}
  void update(uint64_t bytes, int64_t tokens, bool force = false) {
    if (!on_) return;
    const auto now = Clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double s = std::max(1e-9, seconds_since(start_));
    const double rate = double(bytes) / s;
    const double pct = total_ ? 100.0 * double(bytes) / double(total_) : 100.0;
    const std::string eta =
        rate > 0 && bytes > 0 ? duration_str(double(total_ - std::min(bytes, total_)) / rate) : "?";
    std::fprintf(stderr, "\rpreprocess: %.1f / %.1f MB (%.1f%%), %.2f MB/s, %lld tokens, ETA %s\033[K",
                 double(bytes) / 1e6, double(total_) / 1e6, pct, rate / 1e6,
                 static_cast<long long>(tokens), eta.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void done() {
    if (drawn_) std::fprintf(stderr, "\n");
  }

 private:
  uint64_t total_;
  bool on_, drawn_ = false;
  Clock::time_point start_, last_{};
};

// Encodes `docs` on `threads` threads; out[i] = encode(docs[i]) + [eod].
void encode_batch(const Tokenizer& tok, const std::vector<std::string>& docs,
                  std::vector<std::vector<int32_t>>& out, int threads) {
  out.resize(docs.size());
  const int32_t eod = tok.ids().eod;
  auto work = [&](size_t i) {
    out[i] = tok.encode(docs[i]);
    out[i].push_back(eod);
  };
  const int n = std::min<int>(threads, static_cast<int>(docs.size()));
  if (n <= 1) {
    for (size_t i = 0; i < docs.size(); ++i) work(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < n; ++t)
    pool.emplace_back([&, t] {
      try {
        for (size_t i; !failed && (i = next.fetch_add(1)) < docs.size();) work(i);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

int run_preprocess(const Args& args) {
  po::options_description desc("glmrt preprocess");
  desc.add_options()
    ("config", po::value<std::string>()->required(),
     "run config (YAML): model.vocab_size, tokens and tokenizer.model")
    ("input", po::value<std::vector<std::string>>()->multitoken()->required(),
     "input files (one or more)")
    ("output", po::value<std::string>()->required(), "output prefix: writes PREFIX.bin and PREFIX.idx")
    ("format", po::value<std::string>()->default_value("auto"),
     "auto (.jsonl/.json: jsonl, else text), text (documents separated by blank lines), lines "
     "(one document per line) or jsonl ({\"text\": ...} per line)")
    ("threads", po::value<int>(), "encoding threads (default: the machine's cores)");
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("preprocess", desc, args, vm)) return 0;

  int ranks = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (ranks > 1) throw ConfigError("preprocess runs as a single process, not under mpiexec/srun");
  const TextFormat format = parse_text_format(vm["format"].as<std::string>());
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (vm.count("threads")) {
    threads = vm["threads"].as<int>();
    if (threads < 1) throw ConfigError("--threads: must be at least 1, got " + std::to_string(threads));
  }
  const std::string config = vm["config"].as<std::string>();
  const std::vector<std::string> inputs = vm["input"].as<std::vector<std::string>>();
  const std::string prefix = vm["output"].as<std::string>();

  // Everything is checked before the output is created; the writer removes its temporaries on
  // any later error, so a failed run leaves no (partial) output behind.
  const RunConfig rc = load_run_config(config, config_overrides(vm));
  if (rc.tokenizer.model.empty())
    throw ConfigError(config + ": tokenizer.model: preprocess needs a sentencepiece model");
  const Tokenizer tok(rc.tokenizer.model, rc.model, config);
  const uint64_t total_bytes = check_readable_files(inputs);

  const auto start = Clock::now();
  TokenFileWriter writer(prefix);
  Progress progress(total_bytes);
  uint64_t done_bytes = 0, skipped = 0;
  std::vector<std::string> batch;
  std::vector<std::vector<int32_t>> encoded;
  const size_t batch_bytes = size_t(threads) << 20;  // about 1 MB of text per thread
  for (const std::string& path : inputs) {
    DocumentReader reader(path, format);
    uint64_t before = 0;
    auto flush = [&] {
      encode_batch(tok, batch, encoded, threads);
      for (const auto& ids : encoded) writer.add_document(ids);
      batch.clear();
      done_bytes += reader.bytes_read() - before;
      before = reader.bytes_read();
      progress.update(done_bytes, writer.num_tokens());
    };
    size_t pending = 0;
    std::string doc;
    while (reader.next(doc)) {
      pending += doc.size();
      batch.push_back(std::move(doc));
      if (pending >= batch_bytes || batch.size() >= 65536) {
        flush();
        pending = 0;
      }
    }
    flush();
    skipped += reader.skipped_empty();
  }
  progress.update(done_bytes, writer.num_tokens(), true);
  progress.done();
  if (writer.num_documents() == 0)
    throw InputError("no documents in the input" + std::string(inputs.size() > 1 ? "s" : "") +
                     " (every document is empty); nothing written");
  writer.finish();
  const double s = std::max(1e-9, seconds_since(start));
  const std::string skipped_note =
      skipped ? " (" + std::to_string(skipped) + " empty skipped)" : std::string();
  std::fprintf(stderr,
               "glmrt preprocess: %lld documents%s, %lld tokens (eod after each) from %zu file%s "
               "(%.1f MB) in %.2f s: %.0f tokens/s, %.2f MB/s -> %s.bin, %s.idx\n",
               static_cast<long long>(writer.num_documents()),
               skipped_note.c_str(),
               static_cast<long long>(writer.num_tokens()), inputs.size(),
               inputs.size() == 1 ? "" : "s", double(done_bytes) / 1e6, s,
               double(writer.num_tokens()) / s, double(done_bytes) / 1e6 / s, prefix.c_str(),
               prefix.c_str());
  return 0;
}

}  // namespace glmrt
