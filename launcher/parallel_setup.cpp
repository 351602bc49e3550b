#include "launcher/parallel_setup.h"

#include <mpi.h>

namespace glmrt {

void add_parallel_options(po::options_description& desc) {
  desc.add_options()
    ("tensor", po::value<int>(), "tensor-parallel ranks (overrides parallel.tensor)")
    ("pipeline", po::value<int>(), "pipeline stages (overrides parallel.pipeline)")
    ("data", po::value<std::string>(), "data-parallel ranks or auto (overrides parallel.data)");
}

ParallelRuntime setup_parallel(RunConfig& rc, const po::variables_map& vm, Device device) {
  ParallelConfig& p = rc.parallel;
  if (vm.count("tensor")) p.tensor = vm["tensor"].as<int>();
  if (vm.count("pipeline")) p.pipeline = vm["pipeline"].as<int>();
  if (vm.count("data")) {
    const std::string d = vm["data"].as<std::string>();
    if (d == "auto") {
      p.data.reset();
    } else {
      try {
        size_t used = 0;
        p.data = std::stoi(d, &used);
        if (used != d.size()) throw std::invalid_argument(d);
      } catch (const std::exception&) {
        throw ConfigError("--data: expected an integer or auto, got '" + d + "'");
      }
    }
  }
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const Layout layout = p.layout(world);
  const std::vector<int64_t> counts = stage_layer_counts(rc.model.num_layers, layout.pipeline, p.stage_layers);
  ParallelRuntime rt;
  rt.groups = ProcessGroups::create(layout, std::chrono::seconds(p.timeout_s), device);
  const Topology& t = rt.groups->topo;
  rt.shard = ModelShard::of_rank(t, counts);
  glm_param_specs(rc.model, rt.shard);  // validates that the model splits tensor-ways
  rt.tp = {rt.groups->tp.get(), t.tp_rank(), layout.tensor};
  rt.stage_layers = counts;
  return rt;
}

}  // namespace glmrt
