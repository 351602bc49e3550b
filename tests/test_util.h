// Helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "model/glm_config.h"

namespace glmrt::testing {

inline std::string source_path(const std::string& rel) { return std::string(GLMRT_SOURCE_DIR) + "/" + rel; }

// Random normal tensor (F32 or F64) on the CPU; a fixed seed per call site keeps tests repeatable.
inline Tensor random_tensor(const Shape& shape, uint32_t seed, DType dtype = DType::F32,
                            double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  Tensor t = Tensor::empty(shape, DType::F64);
  double* p = t.data_as<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return dtype == DType::F64 ? t : t.to(dtype);
}

// max |a - b| / max |b| over all elements (CPU tensors of any floating dtype).
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double x = a.item(i), y = b.item(i);
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    num = std::max(num, std::abs(x - y));
    den = std::max(den, std::abs(y));
  }
  return den > 0 ? num / den : num;
}

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// Runs a shell command, capturing its output, without the MPI job identity of this process (so a
// child mpiexec or glmrt starts its own job after an in-process MPI singleton).
CommandResult run_command(const std::string& command);
// Runs the glmrt binary with `args`.
CommandResult run_glmrt(const std::string& args);
// A fresh empty directory under the build's temporary area.
std::string temp_dir(const std::string& name);
// "5,17,…": token ids as --prompt-ids takes them.
std::string ids_csv(const std::vector<int32_t>& ids);
// Writes the text file `src` to `dst` with the first `from` replaced by `to` (a config variant);
// throws std::runtime_error when `from` is absent. Returns `dst`.
std::string edited_copy(const std::string& src, const std::string& from, const std::string& to,
                        const std::string& dst);

// A GLM small enough for exact checks: h 32, 4 heads, F 48, vocab 64, 64 positions, exact RoPE
// tables, `layers` layers (the token ids are the GlmConfig defaults: set them where they matter).
inline GlmConfig small_glm_config(int64_t layers) {
  GlmConfig c;
  c.num_layers = layers;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.ffn_hidden_size = 48;
  c.vocab_size = 64;
  c.max_sequence_length = 64;
  c.rotary_fp16_tables = false;
  return c;
}

}  // namespace glmrt::testing
