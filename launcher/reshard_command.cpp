// glmrt reshard: rewrites a checkpoint for another tensor / pipeline layout, offline and
// streaming (peak memory about the largest tensor, not the model).
#include <cstdio>

#include "launcher/options.h"
#include "launcher/run_config.h"
#include "parallel/topology.h"
#include "train/checkpointing.h"

namespace glmrt {

int run_reshard(const Args& args) {
  po::options_description desc("glmrt reshard");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "the model's config (YAML)")
    ("from", po::value<std::string>()->required(), "checkpoint folder to read (its latest)")
    ("to", po::value<std::string>()->required(), "checkpoint folder to write")
    ("tensor", po::value<int>()->required(), "tensor-parallel ranks of the new layout")
    ("pipeline", po::value<int>()->required(), "pipeline stages of the new layout");
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("reshard", desc, args, vm)) return 0;
  require_one_process("reshard");
  const RunConfig rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  const int tensor = vm["tensor"].as<int>(), pipeline = vm["pipeline"].as<int>();
  if (tensor < 1 || pipeline < 1) throw ConfigError("--tensor and --pipeline must be at least 1");
  std::string note;
  const CheckpointManifest m = find_checkpoint(vm["from"].as<std::string>(), rc.model, &note);
  if (!note.empty()) std::printf("glmrt reshard: %s\n", note.c_str());
  const std::vector<int64_t> stages = stage_layer_counts(
      rc.model.num_layers, pipeline, rc.parallel.pipeline == pipeline ? rc.parallel.stage_layers : std::vector<int64_t>{});
  glm_param_specs(rc.model, ModelShard{0, tensor, 0, -1, true, true});  // validates the split
  const std::string out = reshard_checkpoint(m, vm["to"].as<std::string>(), tensor, pipeline, stages);
  std::printf("glmrt reshard: %s (layout %s) -> %s (tensor %d, pipeline %d)\n", m.path.c_str(),
              m.layout.str().c_str(), out.c_str(), tensor, pipeline);
  return 0;
}

}  // namespace glmrt
