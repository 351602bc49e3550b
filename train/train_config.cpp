#include "train/train_config.h"

#include <cmath>
#include <filesystem>

namespace glmrt {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
  }
  return "?";
}

namespace {
void require(bool ok, YamlFields& f, const std::string& key, const std::string& why) {
  if (!ok) throw ConfigError(f.where(key) + ": " + why);
}
}  // namespace

TrainConfig parse_train_section(YamlFields& f) {
  f.expect_keys({"micro_batch_size", "global_batch_size", "steps", "precision", "seed",
                 "hidden_dropout", "attention_dropout", "embedding_grad_shrink", "recompute",
                 "metrics", "log_interval", "loss_scale", "seq_length", "eval_interval",
                 "eval_batches", "rampup_batch_size", "rampup_increment", "rampup_samples",
                 "exit_interval"});
  TrainConfig t;
  t.micro_batch_size = f.get<int64_t>("micro_batch_size", t.micro_batch_size);
  t.global_batch_size = f.get<int64_t>("global_batch_size", t.global_batch_size);
  t.steps = f.get<int64_t>("steps", t.steps);
  const std::string prec = f.get<std::string>("precision", "fp32");
  if (prec == "fp32") t.precision = Precision::FP32;
  else if (prec == "bf16") t.precision = Precision::BF16;
  else if (prec == "fp16") t.precision = Precision::FP16;
  else require(false, f, "precision", "expected fp32, bf16 or fp16, got '" + prec + "'");
  t.seed = f.get<uint64_t>("seed", t.seed);
  t.hidden_dropout = f.get<double>("hidden_dropout", t.hidden_dropout);
  t.attention_dropout = f.get<double>("attention_dropout", t.attention_dropout);
  t.embedding_grad_shrink = f.get<double>("embedding_grad_shrink", t.embedding_grad_shrink);
  t.recompute = f.get<bool>("recompute", t.recompute);
  t.metrics = f.get<std::string>("metrics", t.metrics);
  t.log_interval = f.get<int64_t>("log_interval", t.log_interval);
  t.seq_length = f.get<int64_t>("seq_length", t.seq_length);
  t.exit_interval = f.get<int64_t>("exit_interval", t.exit_interval);
  t.eval_interval = f.get<int64_t>("eval_interval", t.eval_interval);
  t.eval_batches = f.get<int64_t>("eval_batches", t.eval_batches);
  t.rampup_batch_size = f.get<int64_t>("rampup_batch_size", t.rampup_batch_size);
  t.rampup_increment = f.get<int64_t>("rampup_increment", t.rampup_increment);
  t.rampup_samples = f.get<int64_t>("rampup_samples", t.rampup_samples);
  YamlFields ls(f.node("loss_scale"), f.child_path("loss_scale"), f.source());
  ls.expect_keys({"initial", "window", "hysteresis", "min"});
  t.loss_scale.initial = ls.get<double>("initial", t.loss_scale.initial);
  t.loss_scale.window = ls.get<int64_t>("window", t.loss_scale.window);
  t.loss_scale.hysteresis = ls.get<int64_t>("hysteresis", t.loss_scale.hysteresis);
  t.loss_scale.min = ls.get<double>("min", t.loss_scale.min);
  ls.finish();
  f.finish();

  require(t.micro_batch_size > 0, f, "micro_batch_size", "must be positive");
  require(t.global_batch_size > 0 && t.global_batch_size % t.micro_batch_size == 0, f,
          "global_batch_size",
          "must be a positive multiple of micro_batch_size " + std::to_string(t.micro_batch_size));
  require(t.steps >= 0, f, "steps", "must not be negative");
  require(t.hidden_dropout >= 0 && t.hidden_dropout < 1, f, "hidden_dropout", "must be in [0, 1)");
  require(t.attention_dropout >= 0 && t.attention_dropout < 1, f, "attention_dropout",
          "must be in [0, 1)");
  require(t.embedding_grad_shrink > 0 && t.embedding_grad_shrink <= 1, f, "embedding_grad_shrink",
          "must be in (0, 1]");
  require(t.log_interval > 0, f, "log_interval", "must be positive");
  require(t.seq_length >= 0, f, "seq_length", "must not be negative");
  require(t.exit_interval >= 0, f, "exit_interval", "must not be negative");
  require(t.eval_interval >= 0, f, "eval_interval", "must not be negative");
  require(t.eval_batches > 0, f, "eval_batches", "must be positive");
  if (t.rampup_batch_size > 0) {
    require(t.rampup_batch_size < t.global_batch_size, f, "rampup_batch_size",
            "must be smaller than global_batch_size");
    require(t.rampup_increment > 0 && (t.global_batch_size - t.rampup_batch_size) % t.rampup_increment == 0,
            f, "rampup_increment", "must be positive and divide global_batch_size - rampup_batch_size");
    require(t.rampup_samples > 0, f, "rampup_samples", "must be positive");
  }
  require(t.loss_scale.initial > 0 && t.loss_scale.min > 0 && t.loss_scale.window > 0 &&
              t.loss_scale.hysteresis > 0,
          f, "loss_scale", "initial, min, window and hysteresis must be positive");
  return t;
}

OptimizerConfig parse_optimizer_section(YamlFields& f) {
  f.expect_keys({"lr", "min_lr", "warmup_steps", "decay_steps", "decay", "beta1", "beta2", "eps",
                 "weight_decay", "clip_grad"});
  OptimizerConfig o;
  o.lr = f.get<double>("lr", o.lr);
  o.min_lr = f.get<double>("min_lr", o.min_lr);
  o.warmup_steps = f.get<int64_t>("warmup_steps", o.warmup_steps);
  o.decay_steps = f.nullable<int64_t>("decay_steps");
  const std::string decay = f.get<std::string>("decay", "cosine");
  if (decay == "cosine") o.decay = LrDecay::Cosine;
  else if (decay == "linear") o.decay = LrDecay::Linear;
  else if (decay == "constant") o.decay = LrDecay::Constant;
  else require(false, f, "decay", "expected cosine, linear or constant, got '" + decay + "'");
  o.beta1 = f.get<double>("beta1", o.beta1);
  o.beta2 = f.get<double>("beta2", o.beta2);
  o.eps = f.get<double>("eps", o.eps);
  o.weight_decay = f.get<double>("weight_decay", o.weight_decay);
  o.clip_grad = f.get<double>("clip_grad", o.clip_grad);
  f.finish();
  require(o.lr >= 0, f, "lr", "must not be negative");
  require(o.min_lr >= 0 && o.min_lr <= o.lr, f, "min_lr", "must be in [0, lr]");
  require(o.warmup_steps >= 0, f, "warmup_steps", "must not be negative");
  require(o.beta1 >= 0 && o.beta1 < 1, f, "beta1", "must be in [0, 1)");
  require(o.beta2 >= 0 && o.beta2 < 1, f, "beta2", "must be in [0, 1)");
  require(o.eps > 0, f, "eps", "must be positive");
  require(o.weight_decay >= 0, f, "weight_decay", "must not be negative");
  require(o.clip_grad >= 0, f, "clip_grad", "must not be negative (0 disables clipping)");
  return o;
}

namespace {
std::string resolve(const std::string& dir, const std::string& path) {
  std::filesystem::path p(path);
  return p.is_absolute() || dir.empty() ? p.string() : (std::filesystem::path(dir) / p).string();
}
}  // namespace

DataConfig parse_data_section(YamlFields& f, const std::string& config_dir) {
  f.expect_keys({"samples", "tokens", "split", "glm"});
  DataConfig d;
  if (auto s = f.nullable<std::string>("samples")) d.samples = resolve(config_dir, *s);
  YAML::Node tokens = f.node("tokens");
  if (tokens.IsDefined() && !tokens.IsNull()) {
    // tokens: PREFIX | [PREFIX, ...] | [[weight, PREFIX], ...]
    auto bad = [&] {
      throw ConfigError(f.where("tokens") + ": expected a prefix, a list of prefixes or a list of "
                        "[weight, prefix] pairs");
    };
    if (tokens.IsScalar()) {
      d.tokens.emplace_back(1.0, resolve(config_dir, tokens.as<std::string>()));
    } else if (tokens.IsSequence()) {
      for (const auto& item : tokens) {
        if (item.IsScalar()) {
          d.tokens.emplace_back(1.0, resolve(config_dir, item.as<std::string>()));
        } else if (item.IsSequence() && item.size() == 2) {
          double w = 0;
          try {
            w = item[0].as<double>();
          } catch (const YAML::Exception&) {
            bad();
          }
          if (!(w > 0)) throw ConfigError(f.where("tokens") + ": weights must be positive");
          d.tokens.emplace_back(w, resolve(config_dir, item[1].as<std::string>()));
        } else {
          bad();
        }
      }
    } else {
      bad();
    }
  }
  YAML::Node split = f.node("split");
  if (split.IsDefined() && !split.IsNull()) {
    try {
      d.split = split.as<std::vector<double>>();
    } catch (const YAML::Exception&) {
      throw ConfigError(f.where("split") + ": expected [train, validation] shares, e.g. [98, 2]");
    }
    if (d.split.size() != 2 || d.split[0] <= 0 || d.split[1] < 0)
      throw ConfigError(f.where("split") + ": expected [train, validation] shares, e.g. [98, 2]");
  }
  d.glm = f.node("glm");
  f.finish();
  if (!d.samples.empty() && !d.tokens.empty())
    throw ConfigError(f.where("samples") + ": give either data.samples or data.tokens, not both");
  return d;
}

CheckpointConfig parse_checkpoint_section(YamlFields& f) {
  f.expect_keys({"save", "interval", "keep", "load", "async"});
  CheckpointConfig c;
  c.save = f.get<std::string>("save", c.save);
  c.interval = f.get<int64_t>("interval", c.interval);
  c.keep = f.get<int64_t>("keep", c.keep);
  c.load = f.get<std::string>("load", c.load);
  c.async = f.get<bool>("async", c.async);
  f.finish();
  require(c.interval >= 0, f, "interval", "must not be negative");
  require(c.keep >= 0, f, "keep", "must not be negative");
  return c;
}

TokenizerConfig parse_tokenizer_section(YamlFields& f, const std::string& config_dir) {
  f.expect_keys({"model"});
  TokenizerConfig t;
  if (auto m = f.nullable<std::string>("model")) t.model = resolve(config_dir, *m);
  f.finish();
  return t;
}

double learning_rate(const OptimizerConfig& o, int64_t train_steps, int64_t t) {
  if (o.warmup_steps > 0 && t <= o.warmup_steps)
    return o.lr * static_cast<double>(t) / static_cast<double>(o.warmup_steps);
  const int64_t decay_steps = o.decay_steps.value_or(train_steps);
  if (o.decay == LrDecay::Constant || decay_steps <= o.warmup_steps) return o.lr;
  const double progress = std::min(
      1.0, static_cast<double>(t - o.warmup_steps) / static_cast<double>(decay_steps - o.warmup_steps));
  if (o.decay == LrDecay::Linear) return o.lr - (o.lr - o.min_lr) * progress;
  return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace glmrt
