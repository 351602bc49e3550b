// glmrt quantize: a pre-quantized, weight-only checkpoint (GLM130B.md §6) from a full weight file
// or a checkpoint, offline and streaming: each full tensor is read (memory-mapped), split for the
// new layout and each shard of a linear weight quantized on every core, one tensor at a time, so
// peak memory is about one full tensor, not the model (the released converter needs the whole
// fp16 model in host RAM). generate, serve and forward load the result with --load; the model is
// then the same on every layout whose tensor-parallel degree is a multiple of the one written.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "checkpoint/full_weights.h"
#include "checkpoint/quantize.h"
#include "launcher/options.h"
#include "launcher/run_config.h"
#include "parallel/topology.h"
#include "train/checkpointing.h"

namespace glmrt {

namespace {
uint64_t folder_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) total += e.file_size();
  return total;
}
}  // namespace

int run_quantize(const Args& args) {
  po::options_description desc("glmrt quantize");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "the model's config (YAML)")
    ("weights", po::value<std::string>(), "full (TP=1) weights to quantize, safetensors")
    ("from", po::value<std::string>(), "or: the latest checkpoint in this folder (any layout)")
    ("to", po::value<std::string>()->required(), "checkpoint folder to write")
    ("quantization-bit-width", po::value<int>()->required(), "8 or 4")
    ("tensor", po::value<int>(),
     "tensor-parallel ranks the scales are computed for (default: the config's parallel.tensor); "
     "the result loads with any multiple of it")
    ("pipeline", po::value<int>(), "pipeline stages of the files (default: the config's parallel.pipeline)")
    ("dtype", po::value<std::string>()->default_value("keep"),
     "dtype of the tensors that stay unquantized (embedding, LayerNorms, biases): keep, f32, f16 or bf16");
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("quantize", desc, args, vm)) return 0;
  require_one_process("quantize");
  const auto start = std::chrono::steady_clock::now();
  const RunConfig rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  if (vm.count("weights") == vm.count("from"))
    throw ConfigError("give exactly one of --weights (a full weight file) and --from (a checkpoint folder)");
  const int bits = vm["quantization-bit-width"].as<int>();
  if (bits != 4 && bits != 8)
    throw InputError("--quantization-bit-width must be 4 or 8, got " + std::to_string(bits));  // before the layout
  const int tensor = vm.count("tensor") ? vm["tensor"].as<int>() : rc.parallel.tensor;
  const int pipeline = vm.count("pipeline") ? vm["pipeline"].as<int>() : rc.parallel.pipeline;
  if (tensor < 1 || pipeline < 1) throw ConfigError("--tensor and --pipeline must be at least 1");
  const std::optional<DType> dtype = stored_dtype_option(vm["dtype"].as<std::string>());
  try {
    glm_param_specs(rc.model, ModelShard{0, tensor, 0, -1, true, true});  // validates the split
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("--tensor ") + std::to_string(tensor) + ": " + e.what());
  }
  check_quantizable(rc.model, tensor, bits, "--quantization-bit-width");
  const std::vector<int64_t> stages = stage_layer_counts(
      rc.model.num_layers, pipeline, rc.parallel.pipeline == pipeline ? rc.parallel.stage_layers : std::vector<int64_t>{});
  const std::string to = vm["to"].as<std::string>();

  std::string out, source;
  uint64_t source_bytes = 0;
  if (vm.count("weights")) {
    source = vm["weights"].as<std::string>();
    const SafetensorsReader file(source);
    check_full_weights(file, rc.model);  // everything checked before anything is written
    source_bytes = std::filesystem::file_size(source);
    DType stored = DType::F32;
    if (const SafetensorsEntry* e = file.find("transformer.word_embeddings.weight")) stored = e->dtype;
    CheckpointManifest m;
    m.state.loss_scale = {1.0, 0, 0};
    m.layout = Layout{tensor, pipeline, 1};
    m.stage_layers = stages;
    m.precision = precision_of(dtype.value_or(stored));
    m.seed = rc.train.seed;
    m.model = rc.model;
    m.weight_bits = bits;
    std::string previous;  // released once the next is asked for: one tensor resident at a time
    out = write_checkpoint(to, m, tensor, pipeline, stages, dtype.value_or(stored),
                           [&](const ParamSpec& spec, const std::string&) {
                             if (!previous.empty() && previous != spec.name) file.release(previous);
                             previous = spec.name;
                             return file.tensor(spec.name);
                           });
  } else {
    std::string note;
    const CheckpointManifest m = find_checkpoint(vm["from"].as<std::string>(), rc.model, &note);
    if (!note.empty()) std::printf("glmrt quantize: %s\n", note.c_str());
    source = m.path;
    for (const auto& e : std::filesystem::directory_iterator(m.path))
      if (e.is_regular_file() && e.path().filename().string().rfind("model_", 0) == 0) source_bytes += e.file_size();
    out = quantize_checkpoint(m, to, tensor, pipeline, stages, dtype, bits);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("glmrt quantize: %s (%.1f MiB of weights) -> %s (%d-bit linear weights, tensor %d, pipeline %d: "
              "%.1f MiB) in %.1f s\n",
              source.c_str(), double(source_bytes) / (1 << 20), out.c_str(), bits, tensor, pipeline,
              double(folder_bytes(out)) / (1 << 20), seconds);
  return 0;
}

}  // namespace glmrt
