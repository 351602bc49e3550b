// Shared by the CUDA tests (tests/cuda/test_*.cpp): every CUDA op against the CPU op
// (glmrt::cpu, the fp32 reference) on fresh random inputs.
//
// 16-bit runs give the CPU the same rounded inputs, upcast to F32, so the comparison measures
// only what the GPU path adds (16-bit outputs, fp16 score rounding). Outputs are poisoned with
// NaN before each run, so an unwritten element fails. Errors are ‖out − ref‖ / ‖ref‖; the
// tolerances follow .library/device/METHOD.md: fp32 far under 1e-3 (TF32 would give ~3e-4, so
// 1e-5 also proves the F32 GEMM does not use it), fp16 ~1e-3, bf16 1e-2.
//
// Without a GPU every test skips (the fixture's SetUp). Each run draws a new seed; a failure
// prints it, and GLMRT_TEST_SEED=<seed> replays it.
#pragma once

#include <array>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"

namespace glmrt::cuda_testing {

inline const Device kGpu = Device::cuda(0);
inline const DropoutSpec kNoDropout{};

inline double tolerance(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 1e-5;
    case DType::F16:
      return 2e-3;
    default:
      return 1e-2;  // BF16
  }
}

// Base fixture: skips without a GPU, owns the random generator and the comparisons.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (glmrt::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const char* fixed = std::getenv("GLMRT_TEST_SEED");
    seed_ =
        fixed ? static_cast<uint32_t>(std::strtoul(fixed, nullptr, 10)) : std::random_device{}();
    rng_.seed(seed_);
  }

  // A CPU tensor of normal(mean, stddev) values rounded to `dtype`.
  Tensor random(const Shape& shape, DType dtype, double mean = 0.0, double stddev = 1.0) {
    std::normal_distribution<float> dist(static_cast<float>(mean), static_cast<float>(stddev));
    std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
    for (float& v : values) v = dist(rng_);
    return Tensor::from_floats(values, shape, dtype);
  }
  int32_t uniform_int(int32_t lo, int32_t hi) {  // inclusive
    return std::uniform_int_distribution<int32_t>(lo, hi)(rng_);
  }

  // A device tensor full of NaN: whatever the op leaves unwritten stays NaN.
  static Tensor poisoned(const Shape& shape, DType dtype) {
    std::vector<float> nan(static_cast<size_t>(shape_numel(shape)), NAN);
    return Tensor::from_floats(nan, shape, dtype).to(kGpu);
  }
  static Tensor gpu(const Tensor& host) { return host.to(kGpu); }
  static Tensor host_f32(const Tensor& t) { return t.to(Device::cpu()).to(DType::F32); }

  // ‖out − ref‖ / max(‖ref‖, norm_floor) <= tol, with out on any device and of any floating
  // dtype; any non-finite element of out where ref is finite fails outright. norm_floor: the
  // typical size of the result where single outputs may cancel to near zero (a dot product of
  // random signs), so that their rounding is not measured against their own tiny norm.
  ::testing::AssertionResult close(const Tensor& out, const Tensor& ref, double tol,
                                   double norm_floor = 0) const {
    const Tensor o = host_f32(out), r = host_f32(ref);
    if (o.numel() != r.numel())
      return ::testing::AssertionFailure() << o.str() << " vs reference " << r.str();
    const float* po = o.data_as<float>();
    const float* pr = r.data_as<float>();
    double diff = 0, norm = 0;
    int64_t bad = 0, first_bad = -1;
    for (int64_t i = 0; i < o.numel(); ++i) {
      if (!std::isfinite(po[i]) && std::isfinite(pr[i])) {
        if (bad++ == 0) first_bad = i;
        continue;
      }
      if (!std::isfinite(pr[i])) continue;  // e.g. an lse of -inf on both sides
      diff += (double{po[i]} - pr[i]) * (double{po[i]} - pr[i]);
      norm += double{pr[i]} * pr[i];
    }
    if (bad)
      return ::testing::AssertionFailure()
             << bad << " of " << o.numel() << " elements are not finite (first at " << first_bad
             << ": " << po[first_bad] << ", reference " << pr[first_bad] << "); seed " << seed_;
    const double denom = std::max(std::sqrt(norm), norm_floor);
    const double err = denom > 0 ? std::sqrt(diff) / denom : std::sqrt(diff);
    if (err <= tol) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "relative error " << err << " > " << tol << " (seed " << seed_
           << ", replay with GLMRT_TEST_SEED=" << seed_ << ")";
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

// Tests run once per storage dtype of the CUDA backend.
class CudaOps : public CudaTest, public ::testing::WithParamInterface<DType> {
 protected:
  DType dt() const { return GetParam(); }
  Tensor random_dt(const Shape& shape, double mean = 0.0, double stddev = 1.0) {
    return random(shape, dt(), mean, stddev);
  }
};

inline std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) {
  return std::string(dtype_name(info.param));
}

// Mask spans for `batch` rows of `seq` tokens cut into random segments. The first segment of
// each row is causal (sep = start), the second fully bidirectional (sep = end), the others draw
// sep anywhere in [start, end].
inline Tensor make_spans(int64_t batch, int64_t seq, std::mt19937& rng) {
  std::vector<int32_t> spans;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t start = 0;
    for (int segment = 0; start < seq; ++segment) {
      const int64_t len =
          std::min<int64_t>(seq - start, std::uniform_int_distribution<int64_t>(1, 16)(rng));
      const int64_t end = start + len;
      const int64_t sep = segment == 0   ? start
                          : segment == 1 ? end
                                         : std::uniform_int_distribution<int64_t>(start, end)(rng);
      for (int64_t t = start; t < end; ++t)
        spans.insert(spans.end(), {static_cast<int32_t>(start), static_cast<int32_t>(sep),
                                   static_cast<int32_t>(end)});
      start = end;
    }
  }
  return Tensor::from_ints(spans, {batch * seq, 3});
}

// Two rows of 300 tokens spanning several 64-token tiles of the tensor-core attention kernels:
// row 0 one segment with a bidirectional prefix of 131 tokens; row 1 a fully causal segment of
// 170 tokens beside a fully bidirectional one of 130 (whole tiles skipped, a tile shared by two
// segments, partial last tiles).
constexpr int64_t kLongSpansBatch = 2, kLongSpansSeq = 300;
inline Tensor long_spans() {
  const std::vector<std::vector<std::array<int32_t, 3>>> segments = {
      {{0, 131, 300}}, {{0, 0, 170}, {170, 300, 300}}};
  std::vector<int32_t> values;
  for (const auto& row : segments)
    for (const auto& seg : row)
      for (int32_t t = seg[0]; t < seg[2]; ++t) values.insert(values.end(), seg.begin(), seg.end());
  return Tensor::from_ints(values, {kLongSpansBatch * kLongSpansSeq, 3});
}

}  // namespace glmrt::cuda_testing
