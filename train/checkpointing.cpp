#include "train/checkpointing.h"

#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <functional>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoint/full_weights.h"
#include "checkpoint/quantize.h"

namespace glmrt {

namespace fs = std::filesystem;

namespace {

std::string iter_name(int64_t iteration) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "iter_%07lld", static_cast<long long>(iteration));
  return buf;
}

std::string model_file(int tp, int pp) {
  return "model_tp" + std::to_string(tp) + "_pp" + std::to_string(pp) + ".safetensors";
}
std::string optim_file(int tp, int pp) {
  return "optim_tp" + std::to_string(tp) + "_pp" + std::to_string(pp) + ".safetensors";
}

// XXH3-64 of a whole file, read in 8 MiB blocks (the same value as XXH3_64bits over the whole
// file; a memory map of a 30 GB shard would count the whole file in this process's resident memory).
uint64_t file_hash(const std::string& path, uint64_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError(path + ": cannot open");
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  if (!state || XXH3_64bits_reset(state.get()) != XXH_OK) {
    ::close(fd);
    throw CheckpointError(path + ": cannot hash (out of memory)");
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<char> block(size_t{8} << 20);
  uint64_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd, block.data(), block.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw CheckpointError(path + ": read failed: " + std::strerror(err));
    }
    if (n == 0) break;
    XXH3_64bits_update(state.get(), block.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  ::close(fd);
  *size = total;
  return XXH3_64bits_digest(state.get());
}

// The message of the first of n files whose check fails ("" when none does), the files shared
// out over `comm`'s ranks: rank r checks files r, r + size, ... So a job reads each file of a
// checkpoint once in all, in parallel, not once per rank (GLM-130B's 768 ranks would each read
// its terabytes). Collective over comm; every rank returns the same. MPI_COMM_NULL: this process
// checks them all.
std::string first_failure(MPI_Comm comm, size_t n, const std::function<std::string(size_t)>& check) {
  int rank = 0, ranks = 1;
  if (comm != MPI_COMM_NULL) {
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &ranks);
  }
  int first = INT_MAX;
  std::string message;
  for (size_t i = static_cast<size_t>(rank); i < n; i += static_cast<size_t>(ranks)) {
    try {
      message = check(i);
    } catch (const std::exception& e) {
      message = e.what();
    }
    if (!message.empty()) {
      first = static_cast<int>(i);
      break;
    }
  }
  if (ranks == 1) return message;
  struct {
    int index, rank;
  } local{first, rank}, global{INT_MAX, 0};
  MPI_Allreduce(&local, &global, 1, MPI_2INT, MPI_MINLOC, comm);
  if (global.index == INT_MAX) return "";
  int length = rank == global.rank ? static_cast<int>(message.size()) : 0;
  MPI_Bcast(&length, 1, MPI_INT, global.rank, comm);
  message.resize(static_cast<size_t>(length));
  MPI_Bcast(message.data(), length, MPI_CHAR, global.rank, comm);
  return message;
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Writes `text` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
    if (!out || !(out << text) || !out.flush()) throw CheckpointError(tmp + ": cannot write");
  }
  fsync_path(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw CheckpointError(path + ": cannot rename into place");
  fsync_directory_of(path);
}

nlohmann::json model_json(const GlmConfig& c) {
  return {{"num_layers", c.num_layers},
          {"hidden_size", c.hidden_size},
          {"num_attention_heads", c.num_attention_heads},
          {"ffn_hidden_size", c.ffn_hidden_size},
          {"vocab_size", c.vocab_size},
          {"max_sequence_length", c.max_sequence_length},
          {"layernorm_epsilon", c.layernorm_epsilon},
          {"rotary_base", c.rotary_base},
          {"rotary_fp16_tables", c.rotary_fp16_tables},
          {"deepnorm_alpha", c.alpha()}};
}

// The stage that holds a parameter under `stage_layers`.
int stage_of(const std::string& name, const std::vector<int64_t>& stage_layers) {
  const std::string prefix = "transformer.layers.";
  const int stages = static_cast<int>(stage_layers.size());
  if (name.rfind(prefix, 0) != 0)
    return name.find("final_layernorm") != std::string::npos ? stages - 1 : 0;
  const int64_t layer = std::stoll(name.substr(prefix.size()));
  int64_t end = 0;
  for (int s = 0; s < stages; ++s)
    if (layer < (end += stage_layers[static_cast<size_t>(s)])) return s;
  return stages - 1;
}

}  // namespace

CheckpointSaver::CheckpointSaver(std::string dir, const GlmConfig& model, TrainConfig train,
                                 bool zero, std::vector<int64_t> stage_layers, int64_t keep,
                                 bool async)
    : dir_(std::move(dir)), train_(std::move(train)), zero_(zero),
      stage_layers_(std::move(stage_layers)), keep_(keep), async_(async), model_config_(model) {}

CheckpointSaver::~CheckpointSaver() {
  if (writer_.joinable()) writer_.join();  // never leave a thread writing into a dying process
}

void CheckpointSaver::save(GlmModel& model, Trainer& trainer, ProcessGroups& g) {
  if (pending_) finish(g);  // one save in flight at a time
  const Topology& topo = g.topo;
  state_ = trainer.state();
  const std::string name = iter_name(state_.iteration);
  final_dir_ = (fs::path(dir_) / name).string();
  tmp_dir_ = final_dir_ + ".tmp";
  if (topo.rank() == 0) {
    fs::create_directories(dir_);
    fs::remove_all(tmp_dir_);  // a save killed earlier
    fs::create_directories(tmp_dir_);
  }
  g.world->barrier();
  // Snapshot to host memory (collective under ZeRO: every data-parallel rank gives its shard).
  auto optim = std::make_shared<NamedTensors>(trainer.optimizer_state());
  auto weights = std::make_shared<NamedTensors>();
  const bool writer = topo.dp_rank() == 0;
  if (writer) {
    const GlmParams& p = model.params();
    for (size_t i = 0; i < p.size(); ++i) weights->emplace_back(p.specs()[i].name, p.tensor(i).to(Device::cpu()).clone());
  } else {
    optim->clear();
  }
  const std::string model_path = tmp_dir_ + "/" + model_file(topo.tp_rank(), topo.pp_rank());
  const std::string optim_path = tmp_dir_ + "/" + optim_file(topo.tp_rank(), topo.pp_rank());
  done_ = false;
  error_.clear();
  pending_ = true;
  auto write = [this, writer, weights, optim, model_path, optim_path] {
    try {
      if (writer) {
        const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "glmrt train"}};
        for (const auto& [path, tensors] : {std::pair{model_path, weights}, std::pair{optim_path, optim}}) {
          write_safetensors(path, *tensors, meta);
          uint64_t size = 0;
          const uint64_t hash = file_hash(path, &size);
          write_file_atomic(path + ".sum", std::to_string(hash) + " " + std::to_string(size) + "\n");
        }
      }
    } catch (const std::exception& e) {
      error_ = e.what();
    }
    done_ = true;
  };
  if (async_) writer_ = std::thread(write);
  else write();
}

std::string CheckpointSaver::poll(ProcessGroups& g) {
  if (!pending_) return "";
  // Commit only when every rank's writer is done (a tiny all-reduce at the step boundary).
  Tensor flag = Tensor::from_floats({done_ ? 1.0f : 0.0f}, {1}, DType::F64);
  Tensor min_flag = flag.clone();
  {
    // MIN = −MAX(−x)
    min_flag.data_as<double>()[0] = -flag.item(0);
    g.world->all_reduce(min_flag, ReduceOp::Max);
  }
  if (-min_flag.item(0) < 1.0) return "";
  return commit(g);
}

std::string CheckpointSaver::finish(ProcessGroups& g) {
  if (!pending_) return "";
  if (writer_.joinable()) writer_.join();
  return commit(g);
}

std::string CheckpointSaver::commit(ProcessGroups& g) {
  if (writer_.joinable()) writer_.join();
  pending_ = false;
  // A failed writer fails the job on every rank (its message names the file).
  Tensor failed = Tensor::from_floats({error_.empty() ? 0.0f : 1.0f}, {1}, DType::F64);
  g.world->all_reduce(failed, ReduceOp::Max);
  if (!error_.empty()) throw CheckpointError("saving " + tmp_dir_ + ": " + error_);
  if (failed.item(0) > 0) throw CheckpointError("saving " + tmp_dir_ + ": another rank failed to write its files");
  g.world->barrier();
  const Topology& topo = g.topo;
  const bool root = topo.rank() == 0;
  // Every file as its writer wrote it (size and XXH3 in its .sum), read back by a rank that may
  // sit on another node; the files are shared out over the ranks (first_failure).
  std::vector<std::string> written;
  for (int p = 0; p < topo.layout().pipeline; ++p)
    for (int t = 0; t < topo.layout().tensor; ++t)
      for (const std::string& file : {model_file(t, p), optim_file(t, p)}) written.push_back(file);
  const auto read_sum = [this](const std::string& file, uint64_t& hash, uint64_t& size) {
    std::ifstream in(tmp_dir_ + "/" + file + ".sum");
    if (!(in >> hash >> size)) throw CheckpointError(tmp_dir_ + ": " + file + " was not written");
  };
  const std::string bad = first_failure(g.world->comm(), written.size(), [&](size_t i) -> std::string {
    uint64_t hash = 0, size = 0, actual = 0;
    read_sum(written[i], hash, size);
    if (file_hash(tmp_dir_ + "/" + written[i], &actual) != hash || actual != size)
      return tmp_dir_ + ": " + written[i] + " does not match what its writer wrote";
    return "";
  });
  if (!bad.empty()) throw CheckpointError(bad);
  const Trainer::State& st = state_;
  const std::string& tmp_dir = tmp_dir_;
  const std::string& final_dir = final_dir_;
  const std::string& dir = dir_;
  const std::string name = iter_name(st.iteration);
  const TrainConfig& train = train_;
  const bool zero = zero_;
  const std::vector<int64_t>& stage_layers = stage_layers_;
  const int64_t keep = keep_;
  const GlmConfig& model_config = model_config_;
  if (root) {
    nlohmann::json files = nlohmann::json::object();
    for (const std::string& file : written) {
      uint64_t hash = 0, size = 0;
      read_sum(file, hash, size);
      files[file] = {{"bytes", size}, {"xxh3_64", std::to_string(hash)}};
      fs::remove(tmp_dir + "/" + file + ".sum");
    }
    const nlohmann::json manifest = {
        {"format", "glmrt-checkpoint"},
        {"version", 1},
        {"iteration", st.iteration},
        {"updates", st.updates},
        {"consumed_samples", st.consumed_samples},
        {"loss_scale", {{"scale", st.loss_scale.scale},
                        {"growth_tracker", st.loss_scale.growth_tracker},
                        {"hysteresis_tracker", st.loss_scale.hysteresis_tracker}}},
        {"layout", {{"tensor", topo.layout().tensor}, {"pipeline", topo.layout().pipeline},
                    {"data", topo.layout().data}}},
        {"stage_layers", stage_layers},
        {"zero", zero},
        {"precision", precision_name(train.precision)},
        {"seed", train.seed},
        {"model", model_json(model_config)},
        {"files", files}};
    write_file_atomic(tmp_dir + "/manifest.json", manifest.dump(2) + "\n");
    fsync_path(tmp_dir);
    fs::remove_all(final_dir);
    fs::rename(tmp_dir, final_dir);
    fsync_path(dir);
    write_file_atomic((fs::path(dir) / "latest").string(), name + "\n");
    if (keep > 0) {
      // Keep the newest `keep` by iteration, and never the one just committed (a run started
      // afresh in an old folder must not delete its own checkpoint).
      std::vector<std::string> others;
      for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (e.is_directory() && n.rfind("iter_", 0) == 0 && n.find(".tmp") == std::string::npos && n != name)
          others.push_back(n);
      }
      std::sort(others.begin(), others.end());
      const size_t keep_others = static_cast<size_t>(keep - 1);
      for (size_t i = 0; i + keep_others < others.size(); ++i) fs::remove_all(fs::path(dir) / others[i]);
    }
  }
  g.world->barrier();
  return final_dir;
}


std::string save_checkpoint(const std::string& dir, const TrainConfig& train, bool zero,
                            GlmModel& model, Trainer& trainer, ProcessGroups& g,
                            const std::vector<int64_t>& stage_layers, int64_t keep) {
  CheckpointSaver saver(dir, model.config(), train, zero, stage_layers, keep, /*async=*/false);
  saver.save(model, trainer, g);
  return saver.finish(g);
}

namespace {

CheckpointManifest read_and_verify(const std::string& path, const GlmConfig& config, MPI_Comm job) {
  const std::string mpath = path + "/manifest.json";
  std::ifstream in(mpath);
  if (!in) throw CheckpointError(mpath + ": missing (an incomplete checkpoint)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(mpath + ": malformed: " + e.what());
  }
  CheckpointManifest m;
  try {
    if (j.at("format") != "glmrt-checkpoint") throw CheckpointError(mpath + ": not a glmrt checkpoint");
    m.path = path;
    m.iteration = j.at("iteration");
    m.state.iteration = m.iteration;
    m.state.updates = j.at("updates");
    m.state.consumed_samples = j.at("consumed_samples");
    m.state.loss_scale = {j.at("loss_scale").at("scale"), j.at("loss_scale").at("growth_tracker"),
                          j.at("loss_scale").at("hysteresis_tracker")};
    m.layout = {j.at("layout").at("tensor"), j.at("layout").at("pipeline"), j.at("layout").at("data")};
    m.stage_layers = j.at("stage_layers").get<std::vector<int64_t>>();
    m.zero = j.at("zero");
    m.precision = j.at("precision");
    m.seed = j.value("seed", uint64_t{0});
    m.weight_bits = j.value("quantization_bit_width", 0);
    if (m.weight_bits != 0 && m.weight_bits != 4 && m.weight_bits != 8)
      throw CheckpointError(mpath + ": quantization_bit_width must be 4 or 8, found " +
                            std::to_string(m.weight_bits));
    const nlohmann::json want = model_json(config);
    for (const auto& [key, value] : want.items())
      if (j.at("model").at(key) != value)
        throw CheckpointError(mpath + ": saved from another model: model." + key + " is " +
                              j.at("model").at(key).dump() + ", the config says " + value.dump());
    m.model = config;
    struct Expected {
      std::string path, hash;
      uint64_t bytes;
    };
    std::vector<Expected> files;
    for (const auto& [file, info] : j.at("files").items())
      files.push_back({path + "/" + file, info.at("xxh3_64").get<std::string>(), info.at("bytes").get<uint64_t>()});
    // Size and checksum of every file, each read by one rank of the job.
    const std::string bad = first_failure(job, files.size(), [&](size_t i) -> std::string {
      const Expected& f = files[i];
      if (!fs::exists(f.path)) return f.path + ": missing";
      uint64_t size = 0;
      const uint64_t hash = file_hash(f.path, &size);
      if (size != f.bytes)
        return f.path + ": " + std::to_string(size) + " bytes, the manifest says " + std::to_string(f.bytes) +
               " (truncated or replaced)";
      if (std::to_string(hash) != f.hash) return f.path + ": checksum mismatch (corrupted)";
      return "";
    });
    if (!bad.empty()) throw CheckpointError(bad);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(mpath + ": incomplete manifest: " + e.what());
  }
  return m;
}

}  // namespace

CheckpointManifest find_checkpoint(const std::string& dir, const GlmConfig& config, std::string* note,
                                   MPI_Comm job) {
  if (!fs::is_directory(dir)) throw CheckpointError(dir + ": no checkpoint folder");
  std::string latest;
  std::ifstream in((fs::path(dir) / "latest").string());
  if (in) std::getline(in, latest);
  std::vector<std::string> candidates;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("iter_", 0) == 0 && n.find(".tmp") == std::string::npos) candidates.push_back(n);
  }
  std::sort(candidates.rbegin(), candidates.rend());
  if (!latest.empty()) {
    candidates.erase(std::remove(candidates.begin(), candidates.end(), latest), candidates.end());
    candidates.insert(candidates.begin(), latest);
  }
  std::string refused;
  for (const std::string& c : candidates) {
    try {
      CheckpointManifest m = read_and_verify((fs::path(dir) / c).string(), config, job);
      if (note && !refused.empty())
        *note = refused + "; loading " + m.path + " instead";
      return m;
    } catch (const CheckpointError& e) {
      // A checkpoint of another model is not a damaged one: refuse outright.
      if (std::string(e.what()).find("saved from another model") != std::string::npos) throw;
      refused += (refused.empty() ? "" : "; ") + std::string("refused ") + e.what();
    }
  }
  throw CheckpointError(dir + ": no loadable checkpoint" + (refused.empty() ? "" : " (" + refused + ")"));
}

namespace {
// Reads the saved shards of one checkpoint and rebuilds any tensor for any shard: the full
// tensor from the saved layout's pieces, re-split through the parameter's shard rule.
class ShardedCheckpointReader {
 public:
  explicit ShardedCheckpointReader(const CheckpointManifest& m) : m_(m) {}
  Tensor fetch(const ParamSpec& spec, const std::string& tensor, bool optimizer,
               const ModelShard& shard) {
    const int stage = stage_of(spec.name, m_.stage_layers);
    const int saved = m_.layout.tensor, tp = shard.tp_size;
    auto file = [&](int t) -> SafetensorsReader& {
      SafetensorsReader& r = reader(optimizer ? optim_file(t, stage) : model_file(t, stage));
      if (!r.find(tensor)) throw CheckpointError(r.path() + ": missing tensor " + tensor);
      return r;
    };
    std::vector<int> read;  // only the saved pieces this shard overlaps (reshard_pieces)
    const Tensor out = reshard_pieces(
        [&](int t) {
          read.push_back(t);
          return file(t).tensor(tensor);
        },
        saved, spec.rule, shard.tp_rank, tp);
    for (const int t : read) file(t).release(tensor);  // one tensor of the files resident at a time
    return out;
  }
  // A linear weight of a pre-quantized checkpoint, for `shard` (shard_quantized).
  QuantizedTensor fetch_quantized(const ParamSpec& spec, const ModelShard& shard) {
    const int stage = stage_of(spec.name, m_.stage_layers);
    std::vector<int> read;
    QuantizedTensor out = shard_quantized(
        [&](int t) {
          SafetensorsReader& r = reader(model_file(t, stage));
          read.push_back(t);
          QuantizedTensor q;
          for (auto [name, out] : {std::pair{spec.name, &q.values}, std::pair{spec.name + "_scale", &q.scale}}) {
            if (!r.find(name)) throw CheckpointError(r.path() + ": missing tensor " + name);
            *out = r.tensor(name);
          }
          return q;
        },
        m_.layout.tensor, m_.weight_bits, spec, shard.tp_rank, shard.tp_size);
    for (const int t : read) reader(model_file(t, stage)).release(spec.name);  // one tensor resident at a time
    return out;
  }

 private:
  SafetensorsReader& reader(const std::string& file) {
    auto& r = readers_[file];
    if (!r) r = std::make_unique<SafetensorsReader>(m_.path + "/" + file);
    return *r;
  }
  const CheckpointManifest& m_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers_;
};
}  // namespace

void load_checkpoint_weights(const CheckpointManifest& m, GlmParams& params) {
  if (m.weight_bits && params.weight_bits() != m.weight_bits)
    throw CheckpointError(m.path + " holds weights quantized to " + std::to_string(m.weight_bits) +
                          " bits, which load only as a " + std::to_string(m.weight_bits) + "-bit model (asked: " +
                          (params.weight_bits() ? std::to_string(params.weight_bits()) + " bits" : "full precision") + ")");
  if (m.weight_bits && params.shard().tp_size % m.layout.tensor != 0)
    throw CheckpointError(m.path + " holds weights quantized for tensor-parallel degree " +
                          std::to_string(m.layout.tensor) + " (the scales of attention.dense and dense_4h_to_h "
                          "belong to each shard's columns): it loads with a tensor-parallel degree that is a "
                          "multiple of " + std::to_string(m.layout.tensor) + ", not " +
                          std::to_string(params.shard().tp_size) + "; or quantize the full-precision weights "
                          "again with glmrt quantize --tensor " + std::to_string(params.shard().tp_size));
  ShardedCheckpointReader r(m);
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& spec = params.specs()[i];
    if (m.weight_bits && is_linear_weight(spec.name)) {
      const QuantizedTensor q = r.fetch_quantized(spec, params.shard());
      params.assign_quantized(i, q.values, q.scale);
    } else {
      params.assign(i, r.fetch(spec, spec.name, false, params.shard()));
    }
  }
}

void load_checkpoint(const CheckpointManifest& m, GlmModel& model, Trainer& trainer) {
  if (m.weight_bits)
    throw CheckpointError(m.path + " is a weight-only checkpoint quantized to " + std::to_string(m.weight_bits) +
                          " bits (glmrt quantize), for generate, serve and forward; training resumes "
                          "from a full-precision checkpoint with optimizer state");
  load_checkpoint_weights(m, model.params());
  ShardedCheckpointReader r(m);
  std::map<std::string, const ParamSpec*> specs;
  for (const ParamSpec& s : model.params().specs()) specs[s.name] = &s;
  trainer.load_optimizer_state([&](const std::string& name) {
    const std::string base = name.substr(0, name.rfind('.'));
    Tensor t = r.fetch(*specs.at(base), name, true, model.shard());
    return t.dtype() == DType::F32 ? t : t.to(DType::F32);
  });
  trainer.restore(m.state);
}

}  // namespace glmrt

namespace glmrt {

std::string write_checkpoint(const std::string& to_dir, const CheckpointManifest& m, int tensor,
                             int pipeline, const std::vector<int64_t>& stage_layers,
                             DType weight_dtype,
                             const std::function<Tensor(const ParamSpec&, const std::string&)>& full) {
  const std::string name = iter_name(m.iteration);
  const std::string final_dir = (fs::path(to_dir) / name).string(), tmp_dir = final_dir + ".tmp";
  const bool created = !fs::exists(to_dir);  // removed again if writing fails
  fs::create_directories(to_dir);
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);
  nlohmann::json files = nlohmann::json::object();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "glmrt"}};
  try {
    for (int p = 0; p < pipeline; ++p) {
      for (int t = 0; t < tensor; ++t) {
        ModelShard shard{t, tensor, 0, stage_layers[static_cast<size_t>(p)], p == 0, p == pipeline - 1};
        for (int s = 0; s < p; ++s) shard.first_layer += stage_layers[static_cast<size_t>(s)];
        const std::vector<ParamSpec> specs = glm_param_specs(m.model, shard);
        std::map<std::string, const ParamSpec*> by_name;
        for (const ParamSpec& sp : specs) by_name[sp.name] = &sp;
        const int bits = m.weight_bits;
        for (const bool optimizer : {false, true}) {
          if (optimizer && bits) continue;  // a quantized checkpoint holds weights only
          std::vector<SafetensorsStreamWriter::Entry> entries;
          for (const ParamSpec& sp : specs) {
            if (optimizer) {
              for (const char* suffix : {".master", ".exp_avg", ".exp_avg_sq"})
                entries.push_back({sp.name + suffix, DType::F32, sp.local_shape});
            } else if (bits && is_linear_weight(sp.name)) {
              const int64_t rows = sp.local_shape[0], cols = sp.local_shape[1];
              entries.push_back({sp.name, DType::I8, {rows, bits == 4 ? cols / 2 : cols}});
              entries.push_back({sp.name + "_scale", DType::F16, {rows}});
            } else {
              entries.push_back({sp.name, weight_dtype, sp.local_shape});
            }
          }
          const std::string file = optimizer ? optim_file(t, p) : model_file(t, p);
          const std::string path = tmp_dir + "/" + file;
          SafetensorsStreamWriter writer(path, entries, meta);
          if (bits && !optimizer) {
            // Each quantized shard: its values and scales written together (the writer takes any
            // order; in the file the I8 values come last).
            for (const ParamSpec& spec : specs) {
              if (!is_linear_weight(spec.name)) continue;
              const QuantizedTensor q =
                  quantize_weight(shard_tensor(full(spec, spec.name), spec.rule, t, tensor), bits, spec.name);
              writer.write(spec.name, q.values);
              writer.write(spec.name + "_scale", q.scale);
            }
          }
          for (const std::string& tensor_name : writer.names()) {
            const std::string base = optimizer ? tensor_name.substr(0, tensor_name.rfind('.')) : tensor_name;
            // Quantized shards (and their NAME_scale) were written above.
            if (!optimizer && bits && (!by_name.count(base) || is_linear_weight(base))) continue;
            const ParamSpec& spec = *by_name.at(base);
            Tensor piece = shard_tensor(full(spec, tensor_name), spec.rule, t, tensor);
            const DType want = optimizer ? DType::F32 : weight_dtype;
            writer.write(tensor_name, piece.dtype() == want ? piece : piece.to(want));
          }
          writer.finish();
          uint64_t size = 0;
          const uint64_t hash = file_hash(path, &size);
          files[file] = {{"bytes", size}, {"xxh3_64", std::to_string(hash)}};
        }
      }
    }
  } catch (...) {
    // Nothing half-written is left: the temporary folder goes, and the target folder if it was new.
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    if (created) fs::remove_all(to_dir, ec);
    throw;
  }
  nlohmann::json manifest = {
      {"format", "glmrt-checkpoint"},
      {"version", 1},
      {"iteration", m.iteration},
      {"updates", m.state.updates},
      {"consumed_samples", m.state.consumed_samples},
      {"loss_scale", {{"scale", m.state.loss_scale.scale},
                      {"growth_tracker", m.state.loss_scale.growth_tracker},
                      {"hysteresis_tracker", m.state.loss_scale.hysteresis_tracker}}},
      {"layout", {{"tensor", tensor}, {"pipeline", pipeline}, {"data", m.layout.data}}},
      {"stage_layers", stage_layers},
      {"zero", m.zero},
      {"precision", m.precision},
      {"seed", m.seed},
      {"model", model_json(m.model)},
      {"files", files}};
  if (m.weight_bits) manifest["quantization_bit_width"] = m.weight_bits;
  write_file_atomic(tmp_dir + "/manifest.json", manifest.dump(2) + "\n");
  fsync_path(tmp_dir);
  fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_path(to_dir);
  write_file_atomic((fs::path(to_dir) / "latest").string(), name + "\n");
  return final_dir;
}

DType checkpoint_weight_dtype(const CheckpointManifest& m) {
  SafetensorsReader probe(m.path + "/" + model_file(0, 0));
  return probe.entries().empty() ? DType::F32 : probe.entries().front().dtype;
}

std::string quantize_checkpoint(const CheckpointManifest& m, const std::string& to_dir, int tensor,
                                int pipeline, const std::vector<int64_t>& stage_layers,
                                const std::optional<DType>& weight_dtype, int bits) {
  if (m.weight_bits)
    throw CheckpointError(m.path + " is already quantized (" + std::to_string(m.weight_bits) +
                          " bits): quantize from full-precision weights");
  ShardedCheckpointReader source(m);
  CheckpointManifest out = m;
  out.weight_bits = bits;
  return write_checkpoint(to_dir, out, tensor, pipeline, stage_layers,
                          weight_dtype.value_or(checkpoint_weight_dtype(m)),
                          [&](const ParamSpec& spec, const std::string& name) {
                            return source.fetch(spec, name, false, ModelShard::whole());
                          });
}

std::string reshard_checkpoint(const CheckpointManifest& m, const std::string& to_dir, int tensor,
                               int pipeline, const std::vector<int64_t>& stage_layers) {
  if (m.weight_bits)
    throw CheckpointError(m.path + " holds weights quantized to " + std::to_string(m.weight_bits) +
                          " bits for tensor-parallel degree " + std::to_string(m.layout.tensor) +
                          ": it loads as it is into any layout whose tensor-parallel degree is a multiple "
                          "of that; for another layout, reshard the full-precision checkpoint and "
                          "quantize it again (glmrt quantize)");
  ShardedCheckpointReader source(m);
  return write_checkpoint(to_dir, m, tensor, pipeline, stage_layers, checkpoint_weight_dtype(m),
                          [&](const ParamSpec& spec, const std::string& name) {
                            const bool optimizer = name != spec.name;
                            return source.fetch(spec, name, optimizer, ModelShard::whole());
                          });
}

}  // namespace glmrt
