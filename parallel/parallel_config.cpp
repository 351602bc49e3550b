#include "parallel/parallel_config.h"

namespace glmrt {

Layout ParallelConfig::layout(int world) const {
  if (tensor < 1 || pipeline < 1)
    throw ConfigError("parallel: tensor and pipeline must be at least 1");
  if (world % (tensor * pipeline) != 0)
    throw ConfigError("parallel: " + std::to_string(world) + " ranks are not divisible by tensor " +
                      std::to_string(tensor) + " × pipeline " + std::to_string(pipeline));
  const int d = data.value_or(world / (tensor * pipeline));
  if (d < 1 || tensor * pipeline * d != world)
    throw ConfigError("parallel: tensor " + std::to_string(tensor) + " × pipeline " +
                      std::to_string(pipeline) + " × data " + std::to_string(d) + " = " +
                      std::to_string(tensor * pipeline * d) + " ranks, the job has " +
                      std::to_string(world));
  return {tensor, pipeline, d};
}

ParallelConfig parse_parallel_section(YamlFields& f) {
  f.expect_keys({"tensor", "pipeline", "data", "stage_layers", "zero", "timeout_s", "bucket_mb"});
  ParallelConfig p;
  p.tensor = f.get<int>("tensor", p.tensor);
  p.pipeline = f.get<int>("pipeline", p.pipeline);
  YAML::Node d = f.node("data");
  if (d.IsDefined() && !d.IsNull() && !(d.IsScalar() && d.Scalar() == "auto")) {
    try {
      p.data = d.as<int>();
    } catch (const YAML::Exception&) {
      throw ConfigError(f.where("data") + ": expected an integer or auto, got '" + YAML::Dump(d) + "'");
    }
  }
  YAML::Node sl = f.node("stage_layers");
  if (sl.IsDefined() && !sl.IsNull()) {
    try {
      p.stage_layers = sl.as<std::vector<int64_t>>();
    } catch (const YAML::Exception&) {
      throw ConfigError(f.where("stage_layers") + ": expected a list of layer counts per stage");
    }
  }
  p.zero = f.get<bool>("zero", p.zero);
  p.timeout_s = f.get<int64_t>("timeout_s", p.timeout_s);
  p.bucket_mb = f.get<int64_t>("bucket_mb", p.bucket_mb);
  f.finish();
  if (p.tensor < 1) throw ConfigError(f.where("tensor") + ": must be at least 1");
  if (p.pipeline < 1) throw ConfigError(f.where("pipeline") + ": must be at least 1");
  if (p.data && *p.data < 1) throw ConfigError(f.where("data") + ": must be at least 1 or auto");
  if (p.timeout_s < 1) throw ConfigError(f.where("timeout_s") + ": must be positive");
  if (p.bucket_mb < 1) throw ConfigError(f.where("bucket_mb") + ": must be positive");
  return p;
}

}  // namespace glmrt
