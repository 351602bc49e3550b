#include "train/training_log.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kernels/ops.h"

namespace glmrt {

double flops_per_token(const GlmConfig& c, int64_t seq) {
  const double h = static_cast<double>(c.hidden_size), f = static_cast<double>(c.ffn_hidden_size);
  const double per_layer = 3 * h * h + h * h + 3 * h * f;  // qkv, dense, h→2F, F→h
  const double weights =
      static_cast<double>(c.num_layers) * per_layer + h * static_cast<double>(c.vocab_size);
  return 6.0 * weights + 12.0 * static_cast<double>(c.num_layers) * h * static_cast<double>(seq);
}

double measure_gemm_peak(DType dtype, Device device) {
  const int64_t n = device.is_cpu() ? 512 : 4096;
  Tensor a = Tensor::from_floats(std::vector<float>(static_cast<size_t>(n * n), 0.5f), {n, n}, DType::F32);
  if (dtype != DType::F32) a = a.to(dtype);
  a = a.to(device);
  Tensor c = Tensor::empty({n, n}, dtype, device);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    gemm(a, false, a, true, c, 1.0f, 0.0f);
    c.to(Device::cpu());  // waits for the device
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n * n * n) / s);
  }
  return best;
}

TrainingLog::TrainingLog(bool enabled, const GlmConfig& model, const TrainConfig& train,
                         int64_t seq, int ranks, double peak, bool append)
    : enabled_(enabled), model_(model), train_(train), seq_(seq), ranks_(ranks), peak_(peak),
      terminal_(::isatty(1) != 0) {
  if (!enabled_) return;
  const std::filesystem::path path(train.metrics);
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  metrics_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!metrics_) throw ConfigError("train.metrics: cannot write " + train.metrics);
  plot_path_ = std::filesystem::path(path).replace_extension(".png").string();
}

void TrainingLog::step(const StepMetrics& m, int64_t skipped_total) {
  if (!enabled_) return;
  elapsed_ += m.seconds;
  const double tokens_per_s = static_cast<double>(m.tokens) / m.seconds;
  const double flops_per_rank = flops_per_token(model_, seq_) * tokens_per_s / ranks_;
  const double mfu = peak_ > 0 ? flops_per_rank / peak_ : 0.0;
  nlohmann::json line = {{"iteration", m.iteration},   {"loss", m.loss},
                         {"grad_norm", m.grad_norm},   {"lr", m.lr},
                         {"loss_scale", m.loss_scale}, {"skipped", m.skipped},
                         {"consumed_samples", m.consumed_samples},
                         {"tokens_per_s", tokens_per_s},
                         {"tflops_per_device", flops_per_rank / 1e12},
                         {"mfu", mfu}};
  metrics_ << line.dump() << "\n" << std::flush;
  if (!m.skipped) train_curve_.emplace_back(m.iteration, m.loss);
  if (m.iteration % train_.log_interval != 0 && m.iteration != train_.steps) return;
  std::printf(" iteration %8lld/%8lld | consumed samples %10lld | lr %.3E | loss %.6E | "
              "loss scale %.1f | grad norm %.3f | skipped %lld | tokens/s %.0f | "
              "TFLOP/s per device %.3f | MFU %.1f%%",
              static_cast<long long>(m.iteration), static_cast<long long>(train_.steps),
              static_cast<long long>(m.consumed_samples), m.lr, m.loss, m.loss_scale, m.grad_norm,
              static_cast<long long>(skipped_total), tokens_per_s, flops_per_rank / 1e12,
              100.0 * mfu);
  if (terminal_ && m.iteration < train_.steps) {
    const double eta = elapsed_ / static_cast<double>(m.iteration) *
                       static_cast<double>(train_.steps - m.iteration);
    std::printf(" | ETA %02d:%02d:%02d", static_cast<int>(eta / 3600),
                static_cast<int>(std::fmod(eta, 3600) / 60), static_cast<int>(std::fmod(eta, 60)));
  }
  std::printf("\n");
  std::fflush(stdout);
}

void TrainingLog::validation(int64_t iteration, double loss) {
  if (!enabled_) return;
  valid_curve_.emplace_back(iteration, loss);
  nlohmann::json line = {{"iteration", iteration}, {"validation_loss", loss},
                         {"validation_ppl", std::exp(std::min(loss, 50.0))}};
  metrics_ << line.dump() << "\n" << std::flush;
  std::printf(" validation at iteration %lld | loss %.6E | PPL %.3E\n",
              static_cast<long long>(iteration), loss, std::exp(std::min(loss, 50.0)));
  std::fflush(stdout);
}

void TrainingLog::finish() {
  if (!enabled_ || train_curve_.empty()) return;
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::printf("glmrt train: gnuplot not found; no loss plot (metrics in %s)\n", train_.metrics.c_str());
    return;
  }
  const std::string dir = std::filesystem::path(plot_path_).parent_path().string();
  const std::string base = (dir.empty() ? std::string(".") : dir) + "/.loss_plot";
  {
    std::ofstream t(base + ".train"), v(base + ".valid"), g(base + ".gp");
    for (auto [i, l] : train_curve_) t << i << " " << l << "\n";
    for (auto [i, l] : valid_curve_) v << i << " " << l << "\n";
    g << "set terminal pngcairo size 900,540 noenhanced\n"
      << "set output '" << plot_path_ << "'\n"
      << "set title 'glmrt: loss'\nset xlabel 'iteration'\nset ylabel 'loss'\nset grid\n"
      << "plot '" << base << ".train' using 1:2 with lines title 'training'"
      << (valid_curve_.empty() ? "" : ", '" + base + ".valid' using 1:2 with linespoints title 'validation'")
      << "\n";
  }
  const int rc = std::system(("gnuplot " + base + ".gp 2>/dev/null").c_str());
  for (const char* ext : {".train", ".valid", ".gp"}) std::filesystem::remove(base + ext);
  if (rc == 0) std::printf("glmrt train: loss curves -> %s\n", plot_path_.c_str());
}

}  // namespace glmrt
