// glmrt data-sample: prints GLM samples built from the configured token files as JSON lines (the
// format data.samples reads), so a user can see what the model learns from.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "launcher/data_setup.h"
#include "launcher/options.h"

namespace glmrt {

int run_data_sample(const Args& args) {
  po::options_description desc("glmrt data-sample");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "run config (YAML) with data.tokens")
    ("count", po::value<int64_t>()->default_value(10), "number of samples")
    ("start", po::value<int64_t>()->default_value(0), "index of the first sample")
    ("split", po::value<std::string>()->default_value("train"), "train or validation")
    ("output", po::value<std::string>(), "write JSON lines here (default: standard output)");
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("data-sample", desc, args, vm)) return 0;
  const RunConfig rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  if (rc.data.tokens.empty())
    throw ConfigError(rc.source + ": data.tokens: data-sample builds samples from token files");
  const int64_t count = vm["count"].as<int64_t>(), start = vm["start"].as<int64_t>();
  if (count < 0 || start < 0) throw ConfigError("--count and --start must not be negative");
  const std::string split = vm["split"].as<std::string>();
  if (split != "train" && split != "validation")
    throw ConfigError("--split: expected train or validation, got '" + split + "'");
  TokenSources s = open_token_sources(rc.data.tokens, rc.data.split, make_sample_builder(rc), rc.train.seed);
  const std::shared_ptr<GlmTokenSource> source = split == "train" ? s.train : s.validation;
  if (!source) throw ConfigError(rc.source + ": data.split gives no validation windows");

  std::string text;
  for (int64_t i = start; i < start + count; ++i) {
    const BuiltSample b = source->build(i);
    const Sample& x = b.sample;
    nlohmann::json j = {{"tokens", x.tokens},         {"targets", x.targets},
                        {"position_ids", x.position_ids}, {"loss_mask", x.loss_mask},
                        {"segment_lengths", x.segment_lengths}, {"sep", x.sep},
                        {"mode", b.mode}};
    text += j.dump() + "\n";
  }
  if (vm.count("output")) {
    const std::string path = vm["output"].as<std::string>(), tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      if (!out || !(out << text) || !out.flush()) throw InputError(path + ": cannot write");
    }
    std::rename(tmp.c_str(), path.c_str());
  } else {
    std::cout << text;
  }
  return 0;
}

}  // namespace glmrt
