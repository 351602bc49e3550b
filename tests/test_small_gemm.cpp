// The few-rows linear kernel (kernels/cpu/small_gemm): against a double-precision reference for
// odd sizes, F32/BF16/F16, with and without bias; 16-bit outputs are exactly the round-to-nearest-
// even of the F32 kernel's result on the same values (AVX2 and portable paths), and the AVX-512
// kernels exactly a scalar model of their documented order; results do not depend on the thread
// count, on n or on the tile a row falls in; the op-level linear_forward takes this path for a
// few rows.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/small_gemm.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::random_tensor;

struct Case {
  int64_t n, k, m;
};

// The values of a CPU tensor as doubles.
std::vector<double> values(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.item(i);
  return v;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Checks an F32 result against the exact (double) x·wᵀ + bias: per element within the worst-case
// bound of fp32 accumulation in 8 lanes (⌈k/8⌉ fused steps, 3 horizontal adds, the bias add) or
// in 16 (⌈k/16⌉ steps and 4 adds), whichever is larger.
void expect_near_reference(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y,
                           const char* what) {
  const int64_t n = x.rows(), k = w.dim(1), m = w.dim(0);
  const std::vector<double> xv = values(x), wv = values(w), yv = values(y);
  const std::vector<double> bv = bias ? values(*bias) : std::vector<double>(m, 0.0);
  const double u = std::ldexp(1.0, -24), steps = static_cast<double>(std::max((k + 7) / 8 + 4, (k + 15) / 16 + 5));
  const double gamma = steps * u / (1 - steps * u);
  int failures = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double exact = bv[j], magnitude = std::abs(bv[j]);
      for (int64_t l = 0; l < k; ++l) {
        exact += xv[i * k + l] * wv[j * k + l];
        magnitude += std::abs(xv[i * k + l] * wv[j * k + l]);
      }
      const double got = yv[i * m + j];
      if (!(std::abs(got - exact) <= gamma * magnitude) && failures++ < 5)
        ADD_FAILURE() << what << ": y[" << i << ", " << j << "] = " << got << ", exact " << exact
                      << ", bound " << gamma * magnitude;
    }
}

// The F32 tensor holding the same values as `t`.
Tensor widened(const Tensor& t) { return t.dtype() == DType::F32 ? t : t.to(DType::F32); }

// x·w in the AVX-512 kernels' order (small_gemm.cpp, tile_avx512_impl): 16 lanes, `chains`
// accumulators (2 for 16-bit weights, 1 for F32) over steps of 16·chains values, the masked
// tail, then the chains added lane by lane, lanes t and t + 8 added, and the 8 lanes summed as
// ((0+4)+(2+6))+((1+5)+(3+7)). Every lane takes a fused multiply-add per step (zeros where masked).
float avx512_order(const float* x, const float* w, int64_t k, int chains) {
  float acc[2][16] = {};
  auto step = [&](int c, int64_t l, int64_t r) {
    for (int64_t t = 0; t < 16; ++t)
      acc[c][t] = std::fma(t < r ? x[l + t] : 0.0f, t < r ? w[l + t] : 0.0f, acc[c][t]);
  };
  int64_t l = 0;
  for (; l + 16 * chains <= k; l += 16 * chains) {
    step(0, l, 16);
    if (chains == 2) step(1, l + 16, 16);
  }
  if (chains == 2 && k - l >= 16) {
    step(0, l, 16);
    l += 16;
    if (l < k) step(1, l, k - l);
  } else if (l < k) {
    step(0, l, k - l);
  }
  float h[8];
  for (int t = 0; t < 8; ++t) {
    const float lo = chains == 2 ? acc[0][t] + acc[1][t] : acc[0][t];
    const float hi = chains == 2 ? acc[0][t + 8] + acc[1][t + 8] : acc[0][t + 8];
    h[t] = lo + hi;
  }
  return ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
}

// x·w in the order of the AVX-512 BF16 units (small_gemm.cpp, tile_dp_impl): 16 lanes over steps
// of 32 values alternating between two accumulators; lane t of a step takes value 2t + 1, then
// 2t, each a fused multiply-add with denormal inputs read as 0 and a denormal result flushed to
// 0 (VDPBF16PS); zeros past k; then the accumulators added and summed as in avx512_order.
float bf16_units_order(const float* x, const float* w, int64_t k) {
  auto flush = [](float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; };
  float acc[2][16] = {};
  for (int64_t l = 0, step = 0; l < k; l += 32, ++step) {
    float* a = acc[step % 2];
    for (int64_t t = 0; t < 16; ++t)
      for (const int64_t e : {l + 2 * t + 1, l + 2 * t}) {
        const float xv = e < k ? flush(x[e]) : 0.0f, wv = e < k ? flush(w[e]) : 0.0f;
        a[t] = flush(std::fma(xv, wv, flush(a[t])));
      }
  }
  float h[8];
  for (int t = 0; t < 8; ++t) h[t] = (acc[0][t] + acc[1][t]) + (acc[0][t + 8] + acc[1][t + 8]);
  return ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
}

// y = x·wᵀ + bias in that order, rounded once to y's dtype (`bf16_units`: BF16 on the BF16 units).
Tensor avx512_model(const Tensor& x, const Tensor& w, const Tensor* bias, DType dt, bool bf16_units) {
  const int64_t n = x.rows(), k = w.dim(1), m = w.dim(0);
  const Tensor xf = widened(x), wf = widened(w);
  const float* xp = xf.data_as<float>();
  const float* wp = wf.data_as<float>();
  std::vector<float> y(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      float v = bf16_units ? bf16_units_order(xp + i * k, wp + j * k, k)
                           : avx512_order(xp + i * k, wp + j * k, k, dt == DType::F32 ? 1 : 2);
      if (bias) v += static_cast<float>(bias->item(j));
      y[static_cast<size_t>(i * m + j)] = v;
    }
  return Tensor::from_floats(y, {n, m}, dt);
}

class SmallGemm : public ::testing::TestWithParam<DType> {
 protected:
  DType dt() const { return GetParam(); }
};

// Every size and bias combination, on the vectorized kernels (AVX-512 where the CPU has it unless
// `allow_avx512` is false) or the portable loop.
void check_sizes(DType dt, bool allow_vectorized, bool allow_avx512 = true, bool allow_bf16_units = true) {
  const Case cases[] = {{1, 72, 33},  {2, 100, 257}, {3, 2053, 33}, {7, 72, 257}, {16, 100, 33},
                        {17, 2053, 1}, {32, 72, 1},   {1, 2053, 257}, {16, 2053, 257},
                        {32, 100, 257}, {2, 72, 1},   {3, 100, 1},    {7, 2053, 33},
                        // F32 with more than 4 rows takes k in chunks of 512: two full chunks,
                        // a last one of one step of 8, then a tail of 5 (and tiles of 4 + 1..3)
                        {16, 1037, 9},  {5, 1037, 7},  {11, 1032, 4},  {6, 7, 12}};
  uint32_t seed = 1;
  for (const Case& c : cases)
    for (bool with_bias : {false, true}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " n=" << c.n << " k=" << c.k
                                        << " m=" << c.m << (with_bias ? " bias" : ""));
      Tensor x = random_tensor({c.n, c.k}, seed++, dt), w = random_tensor({c.m, c.k}, seed++, dt);
      Tensor bias = random_tensor({c.m}, seed++, dt);
      Tensor y = Tensor::empty({c.n, c.m}, dt);
      ASSERT_TRUE(cpu::small_linear_forward(x, w, with_bias ? &bias : nullptr, y, allow_vectorized,
                                            allow_avx512, allow_bf16_units))
          << "the fast path declined";
      // The F32 kernel on the same values: the 16-bit result must be exactly its rounding.
      Tensor x32 = widened(x), w32 = widened(w), b32 = widened(bias);
      Tensor y32 = Tensor::empty({c.n, c.m}, DType::F32);
      ASSERT_TRUE(cpu::small_linear_forward(x32, w32, with_bias ? &b32 : nullptr, y32, allow_vectorized,
                                            allow_avx512));
      expect_near_reference(x32, w32, with_bias ? &b32 : nullptr, y32, "F32 kernel");
      if (allow_vectorized && allow_avx512 && cpu::small_gemm_avx512()) {
        const bool units = dt == DType::BF16 && allow_bf16_units && cpu::small_gemm_bf16_units();
        EXPECT_TRUE(same_bits(y, avx512_model(x, w, with_bias ? &bias : nullptr, dt, units)))
            << (units ? "not the BF16 units' order" : "not the AVX-512 order");
      } else if (dt != DType::F32) {
        EXPECT_TRUE(same_bits(y, y32.to(dt))) << "not the RNE of the fp32 sum";
      }
    }
}

TEST_P(SmallGemm, MatchesReferenceForOddSizes) { check_sizes(dt(), true); }

TEST_P(SmallGemm, PortableLoopMatchesReference) { check_sizes(dt(), false); }

// A CPU with AVX-512 runs the 16-lane kernels; the 8-lane ones (every CPU with AVX2) are checked
// on it too.
TEST_P(SmallGemm, Avx2KernelsMatchReferenceWhereAvx512Runs) {
  if (!cpu::small_gemm_avx512()) GTEST_SKIP() << "no AVX-512: MatchesReferenceForOddSizes ran the AVX2 kernels";
  check_sizes(dt(), true, false);
}

// A CPU with the AVX-512 BF16 units runs BF16 on them; the widening AVX-512 kernels are checked
// on it too.
TEST(SmallGemmBf16, WideningKernelsMatchReferenceWhereBf16UnitsRun) {
  if (!cpu::small_gemm_bf16_units()) GTEST_SKIP() << "no AVX-512 BF16: BF16 ran the widening kernels";
  check_sizes(DType::BF16, true, true, false);
}

TEST_P(SmallGemm, BiasInF32WithSixteenBitTensors) {
  Tensor x = random_tensor({3, 100}, 40, dt()), w = random_tensor({33, 100}, 41, dt());
  Tensor bias16 = random_tensor({33}, 42, dt()), bias32 = widened(bias16);
  Tensor a = Tensor::empty({3, 33}, dt()), b = Tensor::empty({3, 33}, dt());
  ASSERT_TRUE(cpu::small_linear_forward(x, w, &bias16, a));
  ASSERT_TRUE(cpu::small_linear_forward(x, w, &bias32, b));
  EXPECT_TRUE(same_bits(a, b));
}

void check_batch_independence(DType dt, bool allow_avx512, bool allow_bf16_units) {
  const int saved = omp_get_max_threads();
  for (const Case& c : {Case{1, 2053, 257}, Case{16, 2053, 257}, Case{7, 1000, 301},
                        Case{13, 1037, 31}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " k=" << c.k << " m=" << c.m);
    Tensor x = random_tensor({c.n, c.k}, 50, dt), w = random_tensor({c.m, c.k}, 51, dt);
    Tensor bias = random_tensor({c.m}, 52, dt);
    Tensor one = Tensor::empty({c.n, c.m}, dt), two = Tensor::empty({c.n, c.m}, dt);
    omp_set_num_threads(1);
    ASSERT_TRUE(cpu::small_linear_forward(x, w, &bias, one, true, allow_avx512, allow_bf16_units));
    omp_set_num_threads(2);
    ASSERT_TRUE(cpu::small_linear_forward(x, w, &bias, two, true, allow_avx512, allow_bf16_units));
    EXPECT_TRUE(same_bits(one, two));
    // The last row alone (n = 1 uses other tiles than n > 2).
    Tensor last = Tensor::empty({1, c.m}, dt);
    ASSERT_TRUE(cpu::small_linear_forward(x.slice_rows(c.n - 1, c.n), w, &bias, last, true, allow_avx512,
                                          allow_bf16_units));
    EXPECT_TRUE(same_bits(last, one.slice_rows(c.n - 1, c.n).clone()));
  }
  omp_set_num_threads(saved);
}

// Bit-identical on 1 and 2 threads, and a row's result is the same whatever n and tile it is in
// (on the AVX-512 kernels where they run, BF16 with and without the BF16 units, and on the AVX2
// ones).
TEST_P(SmallGemm, IndependentOfThreadCountAndBatch) {
  for (const bool avx512 : {true, false})
    for (const bool units : {true, false}) {
      if (!avx512 && !units) continue;
      SCOPED_TRACE(!avx512 || !cpu::small_gemm_avx512() ? "AVX2"
                   : units && dt() == DType::BF16 && cpu::small_gemm_bf16_units() ? "BF16 units"
                                                                                   : "AVX-512");
      check_batch_independence(dt(), avx512, units);
    }
}


// linear_forward (the op) takes this path for a few rows: same bits as the kernel called directly,
// on a 3-D input; more rows than small_gemm_max_rows go to BLAS / oneDNN and still agree.
TEST_P(SmallGemm, LinearForwardUsesItForFewRows) {
  Tensor x = random_tensor({2, 3, 72}, 60, dt()), w = random_tensor({33, 72}, 61, dt());
  Tensor bias = random_tensor({33}, 62, dt());
  Tensor direct = Tensor::empty({2, 3, 33}, dt()), op = Tensor::empty({2, 3, 33}, dt());
  ASSERT_TRUE(cpu::small_linear_forward(x, w, &bias, direct));
  linear_forward(x, w, &bias, op);
  EXPECT_TRUE(same_bits(direct, op));

  const int64_t many = cpu::small_gemm_max_rows + 1;
  Tensor xl = random_tensor({many, 72}, 63, dt()), yl = Tensor::empty({many, 33}, dt());
  EXPECT_FALSE(cpu::small_linear_forward(xl, w, &bias, yl));
  linear_forward(xl, w, &bias, yl);
  Tensor first = Tensor::empty({1, 33}, dt());
  ASSERT_TRUE(cpu::small_linear_forward(xl.slice_rows(0, 1), w, &bias, first));
  const double tol = dt() == DType::F32 ? 1e-5 : dt() == DType::BF16 ? 1e-2 : 2e-3;
  EXPECT_LT(testing::max_rel_diff(yl.slice_rows(0, 1), first), tol);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SmallGemm,
                         ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(SmallGemmDeclines, WhatItDoesNotCover) {
  Tensor w = random_tensor({5, 8}, 70), x = random_tensor({2, 8}, 71), y = Tensor::empty({2, 5}, DType::F32);
  Tensor x64 = random_tensor({2, 8}, 72, DType::F64), w64 = random_tensor({5, 8}, 73, DType::F64);
  Tensor y64 = Tensor::empty({2, 5}, DType::F64);
  EXPECT_FALSE(cpu::small_linear_forward(x64, w64, nullptr, y64));  // F64
  Tensor x16 = random_tensor({2, 8}, 74, DType::BF16);
  EXPECT_FALSE(cpu::small_linear_forward(x16, w, nullptr, y));  // mixed dtypes
  Tensor wrong_k = random_tensor({2, 9}, 75);
  EXPECT_FALSE(cpu::small_linear_forward(wrong_k, w, nullptr, y));
  Tensor wrong_bias = random_tensor({4}, 76);
  EXPECT_FALSE(cpu::small_linear_forward(x, w, &wrong_bias, y));
  Tensor f16_bias = random_tensor({5}, 77, DType::F16);  // neither F32 nor y's dtype
  EXPECT_FALSE(cpu::small_linear_forward(x, w, &f16_bias, y));
  EXPECT_TRUE(cpu::small_linear_forward(x, w, nullptr, y));
}

}  // namespace
}  // namespace glmrt
