// glmrt init: seeded initial weights (GLM-130B's initialisation) as a full safetensors file.
#include "checkpoint/full_weights.h"
#include "launcher/options.h"
#include "launcher/run_config.h"
#include "model/init.h"

namespace glmrt {

int run_init(const Args& args) {
  po::options_description desc("glmrt init");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "model config (YAML)")
    ("output", po::value<std::string>()->required(), "weights file to write (safetensors)")
    ("seed", po::value<uint64_t>()->default_value(1234), "initialisation seed")
    ("dtype", po::value<std::string>()->default_value("f32"), "stored dtype: f32, f16 or bf16");
  po::variables_map vm;
  if (!parse_options("init", desc, args, vm)) return 0;
  const RunConfig rc = load_run_config(vm["config"].as<std::string>());
  const std::string dt = vm["dtype"].as<std::string>();
  const DType dtype = dt == "f32" ? DType::F32 : dt == "f16" ? DType::F16 : dt == "bf16" ? DType::BF16
                      : throw ConfigError("--dtype: expected f32, f16 or bf16, got '" + dt + "'");
  GlmParams params = GlmParams::allocate(rc.model, DType::F32, Device::cpu());
  init_glm_params(params, rc.model, vm["seed"].as<uint64_t>());
  NamedTensors named = named_tensors(params);
  if (dtype != DType::F32)
    for (auto& [name, t] : named) t = t.to(dtype);
  write_safetensors(vm["output"].as<std::string>(), named,
                    {{"format", "pt"}, {"producer", "glmrt init"}});
  return 0;
}

}  // namespace glmrt
