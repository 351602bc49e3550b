#include "launcher/run_config.h"

#include <filesystem>

namespace glmrt {

RunConfig load_run_config(const std::string& path) {
  RunConfig rc;
  rc.source = path;
  YAML::Node root = load_yaml_file(path);
  YamlFields top(root, "", path);
  top.expect_keys({"model", "tokens", "train", "optimizer", "data", "parallel"});
  if (!top.has("model")) throw ConfigError(path + ": missing required section `model`");
  YamlFields model(top.node("model"), "model", path);
  rc.model = parse_model_section(model, path);
  YamlFields tokens(top.node("tokens"), "tokens", path);
  rc.model.tokens = parse_tokens_section(tokens);
  YamlFields train(top.node("train"), "train", path);
  rc.train = parse_train_section(train);
  YamlFields optimizer(top.node("optimizer"), "optimizer", path);
  rc.optimizer = parse_optimizer_section(optimizer);
  YamlFields data(top.node("data"), "data", path);
  rc.data = parse_data_section(data, std::filesystem::path(path).parent_path().string());
  YamlFields parallel(top.node("parallel"), "parallel", path);
  rc.parallel = parse_parallel_section(parallel);
  top.finish();
  rc.model.validate(path);
  return rc;
}

}  // namespace glmrt
