#include "launcher/run_config.h"

namespace glmrt {

RunConfig load_run_config(const std::string& path) {
  RunConfig rc;
  rc.source = path;
  YAML::Node root = load_yaml_file(path);
  YamlFields top(root, "", path);
  top.expect_keys({"model", "tokens"});
  if (!top.has("model")) throw ConfigError(path + ": missing required section `model`");
  YamlFields model(top.node("model"), "model", path);
  rc.model = parse_model_section(model, path);
  YamlFields tokens(top.node("tokens"), "tokens", path);
  rc.model.tokens = parse_tokens_section(tokens);
  top.finish();
  rc.model.validate(path);
  return rc;
}

}  // namespace glmrt
