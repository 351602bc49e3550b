// glmrt import-sat: the released GLM-130B checkpoint (SwissArmyTransformer layout, GLM130B.md §7)
// to a glmrt checkpoint for any tensor × pipeline layout, offline and streaming.
//
//   SAT_DIR/latest                               the iteration folder's name, e.g. "49300"
//   SAT_DIR/49300/mp_rank_XX_model_states.pt     torch.save({"module": state_dict}) of TP rank XX
//
// The source's tensor-parallel degree is the number of mp_rank files. Every parameter of the
// config must be present in every file with the shape of that rank's piece (a checkpoint of
// another model or another split is refused before anything is written, naming the tensor and
// both shapes); `attention.rotary_emb.inv_freq` buffers are ignored. Each full tensor is then
// merged from the pieces of all files (unshard_tensor: rows, columns, GLU-aware rows, vocabulary
// rows, replicated), read lazily through memory maps, and handed to write_checkpoint, which
// re-splits it for the new layout: peak memory is about one full tensor (plus its fp32 copy for
// the master weights), not the 260 GB model. The optimizer state is fresh (fp32 master = the
// weights, zero Adam moments) and the iteration is 0, so `glmrt train --load` fine-tunes from it.
// With --quantization-bit-width 8|4 the result is instead a pre-quantized, weight-only checkpoint
// (as glmrt quantize writes): the released fp16 checkpoint to INT4 in one streaming pass.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>

#include "checkpoint/quantize.h"
#include "checkpoint/torch_checkpoint.h"
#include "launcher/options.h"
#include "launcher/run_config.h"
#include "parallel/topology.h"
#include "train/checkpointing.h"

namespace glmrt {

namespace {

namespace fs = std::filesystem;

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, s.find_first_not_of(ws));
  const size_t end = s.find_last_not_of(ws);
  s.erase(end == std::string::npos ? 0 : end + 1);
  return s;
}

// The iteration folder `latest` names and its mp_rank files, in rank order.
std::vector<std::string> sat_rank_files(const std::string& from, std::string* iteration) {
  if (!fs::is_directory(from)) throw CheckpointError(from + ": no such folder");
  const std::string latest_path = (fs::path(from) / "latest").string();
  std::ifstream in(latest_path);
  if (!in)
    throw CheckpointError(latest_path + ": missing (a SwissArmyTransformer checkpoint folder holds "
                          "`latest`, naming its iteration folder, e.g. 49300)");
  std::string latest((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  latest = trim(latest);
  if (latest.empty() || latest.find('/') != std::string::npos)
    throw CheckpointError(latest_path + ": expected an iteration folder name, got '" + latest + "'");
  *iteration = latest;
  const fs::path dir = fs::path(from) / latest;
  if (!fs::is_directory(dir))
    throw CheckpointError(dir.string() + ": missing (the folder " + latest_path + " names)");
  static const std::regex pattern(R"(mp_rank_(\d+)_model_states\.pt)");
  std::map<int, std::string> ranks;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, pattern)) ranks[std::stoi(m[1].str())] = e.path().string();
  }
  if (ranks.empty()) throw CheckpointError(dir.string() + ": no mp_rank_XX_model_states.pt files");
  std::vector<std::string> files;
  for (int r = 0; r < static_cast<int>(ranks.size()); ++r) {
    auto it = ranks.find(r);
    if (it == ranks.end()) {
      char want[64];
      std::snprintf(want, sizeof want, "mp_rank_%02d_model_states.pt", r);
      throw CheckpointError(dir.string() + ": " + want + " is missing (found " +
                            std::to_string(ranks.size()) + " mp_rank files, up to rank " +
                            std::to_string(ranks.rbegin()->first) + ")");
    }
    files.push_back(it->second);
  }
  return files;
}

bool ignored(const std::string& name) {
  const std::string suffix = ".rotary_emb.inv_freq";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}


// The full shape the pieces of `piece` imply under `rule` over `n` ranks.
Shape implied_full(Shape piece, ShardRule rule, int n) {
  if (piece.empty() || rule == ShardRule::Replicated) return piece;
  if (rule == ShardRule::Columns) {
    if (piece.size() >= 2) piece[1] *= n;
  } else {
    piece[0] *= n;
  }
  return piece;
}

std::string count_str(int64_t n) {
  char buf[32];
  if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.1fB", double(n) / 1e9);
  else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.1fM", double(n) / 1e6);
  else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", double(n) / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

}  // namespace

int run_import_sat(const Args& args) {
  po::options_description desc("glmrt import-sat");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "the model's config (YAML)")
    ("from", po::value<std::string>()->required(),
     "the released checkpoint folder (holding `latest` and <iteration>/mp_rank_XX_model_states.pt)")
    ("to", po::value<std::string>()->required(), "checkpoint folder to write")
    ("tensor", po::value<int>(), "tensor-parallel ranks of the new layout (default: the config's parallel.tensor)")
    ("pipeline", po::value<int>(), "pipeline stages of the new layout (default: the config's parallel.pipeline)")
    ("dtype", po::value<std::string>()->default_value("keep"),
     "stored weight dtype: keep (the released one, fp16), f32, f16 or bf16")
    ("quantization-bit-width", po::value<int>()->default_value(0),
     "8 or 4: write a pre-quantized, weight-only checkpoint instead (as glmrt quantize: the linear "
     "weights quantized per shard of the new layout, from the released fp16 values); 0 = off");
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("import-sat", desc, args, vm)) return 0;
  require_one_process("import-sat");
  const auto start = std::chrono::steady_clock::now();
  const RunConfig rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  const int tensor = vm.count("tensor") ? vm["tensor"].as<int>() : rc.parallel.tensor;
  const int pipeline = vm.count("pipeline") ? vm["pipeline"].as<int>() : rc.parallel.pipeline;
  if (tensor < 1 || pipeline < 1) throw ConfigError("--tensor and --pipeline must be at least 1");
  const std::optional<DType> dtype = stored_dtype_option(vm["dtype"].as<std::string>());
  const std::vector<int64_t> stages = stage_layer_counts(
      rc.model.num_layers, pipeline,
      rc.parallel.pipeline == pipeline ? rc.parallel.stage_layers : std::vector<int64_t>{});
  try {
    glm_param_specs(rc.model, ModelShard{0, tensor, 0, -1, true, true});  // validates the new split
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("--tensor ") + std::to_string(tensor) + ": " + e.what());
  }
  const int bits = vm["quantization-bit-width"].as<int>();
  if (bits) check_quantizable(rc.model, tensor, bits, "--quantization-bit-width");

  // ---- the source: every rank file, its pieces checked against the config ----
  const std::string from = vm["from"].as<std::string>();
  std::string iteration;
  const std::vector<std::string> files = sat_rank_files(from, &iteration);
  const int n = static_cast<int>(files.size());
  std::vector<std::unique_ptr<TorchCheckpoint>> ranks;
  for (const std::string& f : files) ranks.push_back(std::make_unique<TorchCheckpoint>(f));

  const std::vector<ParamSpec> specs = glm_param_specs(rc.model);
  std::vector<std::vector<ParamSpec>> local(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    try {
      local[static_cast<size_t>(r)] = glm_param_specs(rc.model, ModelShard{r, n, 0, -1, true, true});
    } catch (const ConfigError& e) {
      throw CheckpointError(from + "/" + iteration + ": the checkpoint is split over " + std::to_string(n) +
                            " tensor-parallel ranks (" + std::to_string(n) +
                            " mp_rank files), which the config cannot be: " + e.what());
    }
  }
  std::set<std::string> expected;
  for (const ParamSpec& s : specs) expected.insert(s.name);
  std::optional<DType> source_dtype;
  int64_t parameters = 0;
  for (int r = 0; r < n; ++r) {
    const TorchCheckpoint& ck = *ranks[static_cast<size_t>(r)];
    std::vector<std::string> missing;
    for (size_t i = 0; i < specs.size(); ++i) {
      const ParamSpec& spec = specs[i];
      const TorchTensorInfo* t = ck.find(spec.name);
      if (!t) {
        missing.push_back(spec.name);
        continue;
      }
      const Shape& want = local[static_cast<size_t>(r)][i].local_shape;
      if (t->shape != want) {
        // Pieces of the right full shape but another split: mp_rank files missing or extra.
        std::string hint = "is the config (model.hidden_size, num_attention_heads, ffn_hidden_size, "
                           "vocab_size) that of this checkpoint?";
        const size_t d = spec.rule == ShardRule::Columns ? 1 : 0;
        if (spec.rule != ShardRule::Replicated && t->shape.size() == spec.shape.size() && d < t->shape.size() &&
            t->shape[d] > 0 && spec.shape[d] % t->shape[d] == 0) {
          Shape other = t->shape;
          other[d] = spec.shape[d];
          const int64_t k = spec.shape[d] / t->shape[d];
          if (other == spec.shape && k != n)
            hint = "the pieces look like a split over " + std::to_string(k) + " tensor-parallel ranks, "
                   "but the folder holds " + std::to_string(n) + " mp_rank files: are some missing?";
        }
        throw CheckpointError(
            "size mismatch for " + spec.name + " in " + ck.path() + ": the checkpoint holds " +
            shape_str(t->shape) + " (tensor-parallel piece " + std::to_string(r) + " of " +
            std::to_string(n) + ", a full " + shape_str(implied_full(t->shape, spec.rule, n)) +
            "), the config expects " + shape_str(want) + " (a full " + shape_str(spec.shape) +
            " split " + shard_rule_name(spec.rule) + " over " + std::to_string(n) + "): " + hint);
      }
      if (!t->dtype || !is_floating(*t->dtype))
        throw CheckpointError(ck.path() + ": " + spec.name + " is a torch." + t->storage_type +
                              " tensor, not floating point");
      if (!source_dtype) source_dtype = *t->dtype;
      if (r == 0) parameters += shape_numel(spec.shape);
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t k = 0; k < missing.size() && k < 5; ++k) list += (k ? ", " : "") + missing[k];
      if (missing.size() > 5) list += ", ... (" + std::to_string(missing.size()) + " in all)";
      throw CheckpointError(ck.path() + ": missing tensors the config expects: " + list +
                            " (a checkpoint of another model, or not a GLM state dict)");
    }
    std::vector<std::string> unexpected;
    for (const std::string& name : ck.names())
      if (!expected.count(name) && !ignored(name)) unexpected.push_back(name);
    if (!unexpected.empty()) {
      std::string list;
      for (size_t k = 0; k < unexpected.size() && k < 5; ++k) list += (k ? ", " : "") + unexpected[k];
      if (unexpected.size() > 5) list += ", ... (" + std::to_string(unexpected.size()) + " in all)";
      throw CheckpointError(ck.path() + ": tensors the config has no parameter for: " + list +
                            " (does model.num_layers match the checkpoint?)");
    }
  }
  const DType weight_dtype = dtype.value_or(source_dtype.value_or(DType::F16));

  // ---- write, one full tensor at a time ----
  CheckpointManifest m;
  m.iteration = 0;
  m.state = Trainer::State{};
  // What a fresh trainer of this config starts with (dynamic loss scaling only in fp16).
  m.state.loss_scale = {rc.train.precision == Precision::FP16 ? rc.train.loss_scale.initial : 1.0, 0,
                        rc.train.loss_scale.hysteresis};
  m.layout = Layout{tensor, pipeline, 1};
  m.stage_layers = stages;
  m.zero = false;
  m.precision = precision_of(weight_dtype);
  m.seed = rc.train.seed;
  m.model = rc.model;
  m.weight_bits = bits;
  const std::string to = vm["to"].as<std::string>();
  size_t calls = 0;
  const size_t total_calls = [&] {  // full() calls write_checkpoint makes (for progress)
    size_t c = 0;
    for (int p = 0; p < pipeline; ++p) {
      ModelShard shard{0, tensor, 0, stages[static_cast<size_t>(p)], p == 0, p == pipeline - 1};
      for (int s = 0; s < p; ++s) shard.first_layer += stages[static_cast<size_t>(s)];
      c += glm_param_specs(rc.model, shard).size() * (bits ? 1 : 4) * static_cast<size_t>(tensor);
    }
    return c;
  }();
  auto last_report = std::chrono::steady_clock::now();
  const std::string out = write_checkpoint(
      to, m, tensor, pipeline, stages, weight_dtype, [&](const ParamSpec& spec, const std::string& name) {
        ++calls;
        if (const auto now = std::chrono::steady_clock::now(); now - last_report > std::chrono::seconds(30)) {
          last_report = now;
          std::fprintf(stderr, "glmrt import-sat: %zu of %zu tensors written, %s (%.0f s)\n", calls,
                       total_calls, name.c_str(), std::chrono::duration<double>(now - start).count());
        }
        const std::string suffix = name == spec.name ? "" : name.substr(spec.name.size());
        if (suffix == ".exp_avg" || suffix == ".exp_avg_sq") return Tensor::zeros(spec.shape, DType::F32);
        if (!suffix.empty() && suffix != ".master")
          throw InternalError("import-sat: unexpected tensor " + name);
        std::vector<Tensor> pieces;
        for (const auto& ck : ranks) pieces.push_back(ck->tensor(spec.name));
        Tensor full = unshard_tensor(pieces, spec.rule);
        pieces.clear();
        for (const auto& ck : ranks) ck->release(spec.name);
        // The weight as released (write_checkpoint stores it as weight_dtype, or quantizes it from
        // these values); the fp32 master copy.
        if (suffix.empty()) return full;
        return full.dtype() == DType::F32 ? full : full.to(DType::F32);
      });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string stored = bits ? std::to_string(bits) + "-bit linear weights, the rest " +
                                        std::string(dtype_name(weight_dtype)) + ", weights only"
                                  : std::string(dtype_name(weight_dtype)) + " weights, fresh optimizer state";
  std::printf("glmrt import-sat: %s/%s (%d tensor-parallel ranks, %zu tensors, %s parameters, %s) -> %s "
              "(tensor %d, pipeline %d, %s) in %.1f s\n",
              from.c_str(), iteration.c_str(), n, specs.size(), count_str(parameters).c_str(),
              std::string(dtype_name(source_dtype.value_or(weight_dtype))).c_str(), out.c_str(), tensor,
              pipeline, stored.c_str(), seconds);
  return 0;
}

}  // namespace glmrt
