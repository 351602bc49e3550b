// Strict reading of one YAML mapping: every key must be consumed, or finish() names the unknown
// one by its full path ("model.hidden_sizee"). Type errors name the key, the value and the line.
#pragma once

#include <yaml-cpp/yaml.h>

#include <optional>
#include <set>
#include <string>

#include "kernels/error.h"

namespace glmrt {

class YamlFields {
 public:
  // `node` must be a mapping (or null = empty); `path` is its dotted key path ("" at top level);
  // `source` names the file for messages.
  YamlFields(const YAML::Node& node, std::string path, std::string source);

  bool has(const std::string& key) const;
  YAML::Node node(const std::string& key);  // marks the key used; null node when absent

  template <class T>
  T required(const std::string& key) {
    YAML::Node n = node(key);
    if (!n.IsDefined() || n.IsNull()) throw ConfigError(where(key) + ": missing required key");
    return convert<T>(key, n);
  }
  template <class T>
  T get(const std::string& key, T fallback) {
    YAML::Node n = node(key);
    return (!n.IsDefined() || n.IsNull()) ? fallback : convert<T>(key, n);
  }
  // Absent or `null` gives nullopt.
  template <class T>
  std::optional<T> nullable(const std::string& key) {
    YAML::Node n = node(key);
    if (!n.IsDefined() || n.IsNull()) return std::nullopt;
    return convert<T>(key, n);
  }

  // Throws ConfigError naming the first key that no one asked for.
  void finish() const;
  // Declares the section's keys up front, so that a misspelt key is reported as unknown before
  // the key it was meant to be is reported missing.
  void expect_keys(std::initializer_list<const char*> keys);

  std::string where(const std::string& key) const;  // "file.yaml: model.hidden_size"
  std::string child_path(const std::string& key) const;
  const std::string& source() const { return source_; }

 private:
  template <class T>
  T convert(const std::string& key, const YAML::Node& n) const {
    try {
      if constexpr (std::is_same_v<T, bool>) {
        if (!n.IsScalar() || (n.Scalar() != "true" && n.Scalar() != "false"))
          throw YAML::BadConversion(n.Mark());
      }
      return n.as<T>();
    } catch (const YAML::Exception&) {
      throw ConfigError(where(key) + ": cannot read '" + YAML::Dump(n) + "' (line " +
                        std::to_string(n.Mark().line + 1) + ") as " + type_name<T>());
    }
  }
  template <class T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true/false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else return "a string";
  }

  YAML::Node node_;
  std::string path_, source_;
  std::set<std::string> used_;
};

// Loads a YAML file; parse errors and unreadable files become ConfigError naming the file.
YAML::Node load_yaml_file(const std::string& path);

}  // namespace glmrt
