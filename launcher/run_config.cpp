#include "launcher/run_config.h"

#include <filesystem>

namespace glmrt {

namespace {
void apply_override(YAML::Node& root, const std::string& path, const std::string& item) {
  const size_t eq = item.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + item + ": expected key.path=value");
  const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    throw ConfigError("--set " + item + ": cannot parse the value: " + e.what());
  }
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  // yaml-cpp nodes are handles: walk down with fresh references, creating sections as needed.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    } else if (!next.IsMap()) {
      throw ConfigError("--set " + item + ": " + parts[i] + " is not a section in " + path);
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = parsed;
}
}  // namespace

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  RunConfig rc;
  rc.source = path;
  YAML::Node root = load_yaml_file(path);
  for (const std::string& o : overrides) apply_override(root, path, o);
  YamlFields top(root, "", path);
  top.expect_keys({"model", "tokens", "train", "optimizer", "data", "parallel", "tokenizer", "checkpoint"});
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
  YamlFields tokenizer(top.node("tokenizer"), "tokenizer", path);
  rc.tokenizer = parse_tokenizer_section(tokenizer, std::filesystem::path(path).parent_path().string());
  YamlFields checkpoint(top.node("checkpoint"), "checkpoint", path);
  rc.checkpoint = parse_checkpoint_section(checkpoint);
  YamlFields parallel(top.node("parallel"), "parallel", path);
  rc.parallel = parse_parallel_section(parallel);
  top.finish();
  rc.model.validate(path);
  return rc;
}

}  // namespace glmrt
