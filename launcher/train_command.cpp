// glmrt train: single-rank training from given full weights (fine-tuning) or a seeded init.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/full_weights.h"
#include "launcher/options.h"
#include "launcher/run_config.h"
#include "model/init.h"
#include "train/trainer.h"

namespace glmrt {

namespace {
DType compute_dtype(Precision p) {
  switch (p) {
    case Precision::FP32: return DType::F32;
    case Precision::BF16: return DType::BF16;
    case Precision::FP16: return DType::F16;
  }
  return DType::F32;
}

// 6·N·tokens for the weights' GEMMs (forward + backward) plus attention's 2 GEMMs per layer.
double flops_per_token(const GlmConfig& c, int64_t seq) {
  const double h = static_cast<double>(c.hidden_size), f = static_cast<double>(c.ffn_hidden_size);
  const double per_layer = 3 * h * h + h * h + 3 * h * f;  // qkv, dense, h→2F, F→h
  const double weights = static_cast<double>(c.num_layers) * per_layer + h * c.vocab_size;
  return 6.0 * weights + 12.0 * static_cast<double>(c.num_layers) * h * static_cast<double>(seq);
}
}  // namespace

int run_train(const Args& args) {
  po::options_description desc("glmrt train");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "run config (YAML) with train/optimizer/data")
    ("init-weights", po::value<std::string>(), "start from these full weights (else a seeded init)")
    ("output-weights", po::value<std::string>(), "write the trained full weights here at the end");
  add_compute_options(desc);
  po::variables_map vm;
  if (!parse_options("train", desc, args, vm)) return 0;
  const ComputeOptions compute = compute_options(vm);
  const RunConfig rc = load_run_config(vm["config"].as<std::string>());
  if (rc.data.samples.empty())
    throw ConfigError(rc.source + ": data.samples: no training data configured");
  const DType dtype = compute_dtype(rc.train.precision);
  std::vector<Sample> samples = read_samples_file(rc.data.samples, rc.model);

  GlmParams params = GlmParams::allocate(rc.model, dtype, compute.device);
  if (vm.count("init-weights")) {
    load_full_weights(SafetensorsReader(vm["init-weights"].as<std::string>()), rc.model, params);
  } else {
    GlmParams host = GlmParams::allocate(rc.model, DType::F32, Device::cpu());
    init_glm_params(host, rc.model, rc.train.seed);
    Tensor dst = params.flat();
    dst.copy_from(dtype == DType::F32 ? host.flat() : host.flat().to(dtype));
  }
  GlmModel model(rc.model, std::move(params));
  Trainer trainer(model, rc.train, rc.optimizer, std::move(samples));

  const std::filesystem::path metrics_path(rc.train.metrics);
  if (metrics_path.has_parent_path()) std::filesystem::create_directories(metrics_path.parent_path());
  std::ofstream metrics(metrics_path, std::ios::trunc);
  if (!metrics) throw ConfigError(rc.source + ": train.metrics: cannot write " + rc.train.metrics);
  int64_t skipped_total = 0;
  for (int64_t s = 0; s < rc.train.steps; ++s) {
    const StepMetrics m = trainer.step();
    skipped_total += m.skipped;
    nlohmann::json line = {{"iteration", m.iteration},   {"loss", m.loss},
                           {"grad_norm", m.grad_norm},   {"lr", m.lr},
                           {"loss_scale", m.loss_scale}, {"skipped", m.skipped},
                           {"consumed_samples", m.consumed_samples},
                           {"tokens_per_s", m.tokens / m.seconds}};
    metrics << line.dump() << "\n" << std::flush;
    if (m.iteration % rc.train.log_interval == 0 || m.iteration == rc.train.steps) {
      const double tflops = flops_per_token(rc.model, m.tokens / rc.train.global_batch_size) *
                            static_cast<double>(m.tokens) / m.seconds / 1e12;
      std::printf(" iteration %8lld/%8lld | consumed samples %10lld | lr %.3E | loss %.6E | "
                  "loss scale %.1f | grad norm %.3f | skipped %lld | tokens/s %.0f | TFLOP/s %.3f\n",
                  static_cast<long long>(m.iteration), static_cast<long long>(rc.train.steps),
                  static_cast<long long>(m.consumed_samples), m.lr, m.loss, m.loss_scale,
                  m.grad_norm, static_cast<long long>(skipped_total), m.tokens / m.seconds, tflops);
      std::fflush(stdout);
    }
  }
  if (vm.count("output-weights")) {
    GlmParams out = GlmParams::allocate(rc.model, DType::F32, Device::cpu());
    Tensor dst = out.flat();
    const Tensor& src = trainer.master().flat();
    dst.copy_from(src.device().is_cpu() ? src : src.to(Device::cpu()));
    write_safetensors(vm["output-weights"].as<std::string>(), named_tensors(out),
                      {{"format", "pt"}, {"producer", "glmrt train"}});
  }
  return 0;
}

}  // namespace glmrt
