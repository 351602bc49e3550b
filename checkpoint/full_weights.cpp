#include "checkpoint/full_weights.h"

#include <set>

#include "kernels/ops.h"

namespace glmrt {

namespace {
bool ignored_name(const std::string& name) {
  const std::string suffix = ".attention.rotary_emb.inv_freq";
  return name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

void check_full_weights(const SafetensorsReader& file, const GlmConfig& config) {
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (const ParamSpec& spec : glm_param_specs(config)) {
    expected.insert(spec.name);
    const SafetensorsEntry* e = file.find(spec.name);
    if (!e) {
      problems.push_back("missing tensor " + spec.name + " (expected shape " +
                         shape_str(spec.shape) + ")");
    } else if (e->shape != spec.shape) {
      problems.push_back("tensor " + spec.name + " has shape " + shape_str(e->shape) +
                         ", the config needs " + shape_str(spec.shape));
    } else if (!is_floating(e->dtype)) {
      problems.push_back("tensor " + spec.name + " has dtype " + std::string(dtype_name(e->dtype)) +
                         ", expected a floating type" +
                         (e->dtype == DType::I8 ? " (a pre-quantized model is a checkpoint folder of "
                                                  "glmrt quantize: load it with --load)" : ""));
    }
  }
  for (const SafetensorsEntry& e : file.entries())
    if (!expected.count(e.name) && !ignored_name(e.name))
      problems.push_back("unexpected tensor " + e.name + " " + shape_str(e.shape) +
                         " (not a parameter of this config)");
  if (!problems.empty()) {
    std::string msg = file.path() + ": weights do not match the model config:";
    const size_t shown = std::min<size_t>(problems.size(), 8);
    for (size_t i = 0; i < shown; ++i) msg += "\n  " + problems[i];
    if (problems.size() > shown)
      msg += "\n  ... and " + std::to_string(problems.size() - shown) + " more";
    throw CheckpointError(msg);
  }
}

void load_full_weights(const SafetensorsReader& file, const GlmConfig& config, GlmParams& params) {
  check_full_weights(file, config);
  const ModelShard& shard = params.shard();
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& spec = params.specs()[i];
    params.assign(i, shard_tensor(file.tensor(spec.name), spec.rule, shard.tp_rank, shard.tp_size));
    file.release(spec.name);  // one tensor of the file resident at a time
  }
}

NamedTensors named_tensors(const GlmParams& params) {
  NamedTensors out;
  for (size_t i = 0; i < params.size(); ++i) out.emplace_back(params.specs()[i].name, params.tensor(i));
  return out;
}

}  // namespace glmrt
