// What rank 0 reports while training: one Megatron-style line per logged step (iteration,
// consumed samples, LR, loss, loss scale, grad norm, skipped steps, tokens/s, TFLOP/s per device,
// MFU; plus ETA on a terminal), validation lines, a JSON-lines metrics file, and a PNG of the loss
// curves at the end (gnuplot).
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include "model/glm_config.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace glmrt {

// Model FLOPs per token of a training step (forward + backward): 6 per weight of the matmuls
// (the layers' four linears and the tied head) plus attention's QKᵀ and PV over the full s×s.
double flops_per_token(const GlmConfig& c, int64_t seq);

// GEMM rate of this device in `dtype` (FLOP/s), measured now: the peak MFU is taken against.
double measure_gemm_peak(DType dtype, Device device);

class TrainingLog {
 public:
  // Only the rank with `enabled` writes anything. `metrics_path` is truncated unless `append`.
  TrainingLog(bool enabled, const GlmConfig& model, const TrainConfig& train, int64_t seq,
              int ranks, double peak_flops_per_rank, bool append = false);
  void step(const StepMetrics& m, int64_t skipped_total);
  void validation(int64_t iteration, double loss);
  // Writes the loss curves next to the metrics file (PNG) when gnuplot is available.
  void finish();
  const std::string& plot_path() const { return plot_path_; }

 private:
  bool enabled_;
  GlmConfig model_;
  TrainConfig train_;
  int64_t seq_;
  int ranks_;
  double peak_;
  std::ofstream metrics_;
  std::string plot_path_;
  std::vector<std::pair<int64_t, double>> train_curve_, valid_curve_;
  double elapsed_ = 0;
  bool terminal_;
};

}  // namespace glmrt
