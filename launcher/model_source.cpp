#include "launcher/model_source.h"

#include "checkpoint/full_weights.h"

namespace glmrt {

ModelSource::ModelSource(const po::variables_map& vm, const GlmConfig& config) {
  if (vm.count("weights") == vm.count("load"))
    throw ConfigError("give exactly one of --weights (a full weight file) and --load (a checkpoint folder)");
  if (vm.count("weights")) weights_ = std::make_unique<SafetensorsReader>(vm["weights"].as<std::string>());
  // Every rank of the job builds its ModelSource: the checksums are shared out over all of them.
  else checkpoint_ = std::make_unique<CheckpointManifest>(
           find_checkpoint(vm["load"].as<std::string>(), config, &note_, MPI_COMM_WORLD));
}

void ModelSource::load(const GlmConfig& config, GlmParams& params) const {
  if (weights_) load_full_weights(*weights_, config, params);
  else load_checkpoint_weights(*checkpoint_, params);
}

}  // namespace glmrt
