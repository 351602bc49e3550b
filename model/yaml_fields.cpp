#include "model/yaml_fields.h"

#include <filesystem>

namespace glmrt {

YamlFields::YamlFields(const YAML::Node& node, std::string path, std::string source)
    : node_(node), path_(std::move(path)), source_(std::move(source)) {
  if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap())
    throw ConfigError(source_ + ": " + (path_.empty() ? std::string("the top level") : path_) +
                      " must be a mapping of keys to values (line " +
                      std::to_string(node_.Mark().line + 1) + ")");
}

bool YamlFields::has(const std::string& key) const {
  return node_.IsMap() && node_[key].IsDefined();
}

YAML::Node YamlFields::node(const std::string& key) {
  used_.insert(key);
  if (!node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return node_[key];
}

void YamlFields::finish() const {
  if (!node_.IsMap()) return;
  for (const auto& kv : node_) {
    const std::string key = kv.first.as<std::string>();
    if (!used_.count(key))
      throw ConfigError(source_ + ": unknown key " + child_path(key) + " (line " +
                        std::to_string(kv.first.Mark().line + 1) + ")");
  }
}

void YamlFields::expect_keys(std::initializer_list<const char*> keys) {
  std::set<std::string> saved = used_;
  used_.insert(keys.begin(), keys.end());
  finish();
  used_ = std::move(saved);
}

std::string YamlFields::child_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

std::string YamlFields::where(const std::string& key) const {
  return source_ + ": " + child_path(key);
}

YAML::Node load_yaml_file(const std::string& path) {
  if (!std::filesystem::is_regular_file(path))
    throw ConfigError(path + ": config file not found");
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(path + ": malformed YAML at line " + std::to_string(e.mark.line + 1) +
                      ", column " + std::to_string(e.mark.column + 1) + ": " + e.msg);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ": cannot read YAML: " + e.what());
  }
}

}  // namespace glmrt
