#include "model/rope_tables.h"

#include <cmath>

#include "kernels/half.h"

namespace glmrt {

RopeTables build_rope_tables(int64_t head_dim, int64_t max_positions, double base,
                             bool fp16_faithful) {
  const int64_t half = head_dim / 2;
  RopeTables t{Tensor::empty({max_positions, half}, DType::F32),
               Tensor::empty({max_positions, half}, DType::F32)};
  float* pc = t.cos.data_as<float>();
  float* ps = t.sin.data_as<float>();
  for (int64_t i = 0; i < half; ++i) {
    if (fp16_faithful) {
      // torch: 1. / (base ** (arange(0, d, 2).float() / d)), in fp32, then .half()
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
      const float inv_freq = round_to_f16(1.0f / std::pow(static_cast<float>(base), exponent));
      for (int64_t p = 0; p < max_positions; ++p) {
        const float angle = round_to_f16(round_to_f16(static_cast<float>(p)) * inv_freq);
        pc[p * half + i] = round_to_f16(std::cos(angle));
        ps[p * half + i] = round_to_f16(std::sin(angle));
      }
    } else {
      const double inv_freq = 1.0 / std::pow(base, static_cast<double>(2 * i) / head_dim);
      for (int64_t p = 0; p < max_positions; ++p) {
        const double angle = static_cast<double>(p) * inv_freq;
        pc[p * half + i] = static_cast<float>(std::cos(angle));
        ps[p * half + i] = static_cast<float>(std::sin(angle));
      }
    }
  }
  return t;
}

}  // namespace glmrt
