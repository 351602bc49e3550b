// Dynamic loss scaling for fp16 (Megatron's DynamicGradScaler): on an overflow the step is
// skipped and, once `hysteresis` overflows have been seen, the scale halves (not below min);
// after `window` clean steps in a row it doubles and the hysteresis budget is restored.
// Constant scale 1 for fp32 and bf16.
#pragma once

#include <cstdint>

#include "train/train_config.h"

namespace glmrt {

class LossScaler {
 public:
  LossScaler(const LossScaleConfig& config, bool dynamic);
  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  // Records whether this step's gradients overflowed.
  void update(bool overflow);
  // Checkpointed state: the scale and its two trackers.
  struct State {
    double scale;
    int64_t growth_tracker, hysteresis_tracker;
  };
  State state() const { return {scale_, growth_tracker_, hysteresis_tracker_}; }
  void restore(const State& s) {
    scale_ = s.scale;
    growth_tracker_ = s.growth_tracker;
    hysteresis_tracker_ = s.hysteresis_tracker;
  }

 private:
  LossScaleConfig config_;
  bool dynamic_;
  double scale_;
  int64_t growth_tracker_ = 0, hysteresis_tracker_;
};

}  // namespace glmrt
