#include "train/loss_scaler.h"

#include <algorithm>

namespace glmrt {

LossScaler::LossScaler(const LossScaleConfig& config, bool dynamic)
    : config_(config), dynamic_(dynamic), scale_(dynamic ? config.initial : 1.0),
      hysteresis_tracker_(config.hysteresis) {}

void LossScaler::update(bool overflow) {
  if (!dynamic_) return;
  if (overflow) {
    growth_tracker_ = 0;
    if (--hysteresis_tracker_ <= 0) scale_ = std::max(scale_ * 0.5, config_.min);
  } else if (++growth_tracker_ == config_.window) {
    growth_tracker_ = 0;
    hysteresis_tracker_ = config_.hysteresis;
    scale_ *= 2.0;
  }
}

}  // namespace glmrt
